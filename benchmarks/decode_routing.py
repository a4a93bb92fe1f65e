"""How well causal routing stands in for top-k routing, on validation data.

    python benchmarks/decode_routing.py EXPORT --store data/shakespeare_char.zarr

For every routed layer, on the layer's inputs during the top-k (training) forward pass:
agreement of each causal decision with top-k membership over all tokens (the paper's
"accuracy"), and its precision / recall for the routed class. Then validation loss with
top-k routing (as trained), with causal routing by the predictor and by the router sign
(sigmoid(r) > 0.5), and the fraction of tokens each causal rule routes (which sets
sampling compute). Validation windows: every non-overlapping seq_length window of the
store's held-out tail (the last --val-fraction of tokens, as training splits it).
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
from routing_counter import count_causal_decisions

from modtrain.data.read.dataset import train_val_split
from modtrain.data.read.store import TokenStore
from modtrain.inference.export import load_export
from modtrain.inference.hf_template.modtrain_core import ModtrainLM, tokens_per_row, topk_indices


def validation_windows(store: str, val_fraction: float, seq_length: int) -> torch.Tensor:
    tokens = TokenStore(store)
    _, split = train_val_split(tokens.num_tokens, val_fraction)
    data = np.asarray(tokens.read(split.start, split.stop), dtype=np.int64)
    count = (len(data) - 1) // seq_length
    starts = np.arange(count) * seq_length
    return torch.from_numpy(np.stack([data[s : s + seq_length + 1] for s in starts]))


class Agreement:
    """Confusion counts of causal decisions against top-k membership, per layer and rule."""

    def __init__(self) -> None:
        self.counts: dict[tuple[int, str], np.ndarray] = defaultdict(lambda: np.zeros(4))

    def add(self, layer: int, rule: str, decision: torch.Tensor, member: torch.Tensor) -> None:
        c = self.counts[(layer, rule)]
        c += [int((decision & member).sum()), int((decision & ~member).sum()),
              int((~decision & member).sum()), int((~decision & ~member).sum())]

    def rows(self):
        for (layer, rule), (tp, fp, fn, tn) in sorted(self.counts.items()):
            yield (layer, rule, (tp + tn) / (tp + fp + fn + tn), tp / max(tp + fp, 1),
                   tp / max(tp + fn, 1))


def _watch_topk(model: ModtrainLM, agreement: Agreement) -> list:
    """Hooks that score each routed layer's causal rules against its top-k choice."""
    hooks = []
    for i, layer in enumerate(model.model.layers):
        if layer.router is None:
            continue

        def score(module, args, i=i):
            x = args[0]
            r = module.router.scores(x)  # fp32, as the layer scores
            k = tokens_per_row(module.capacity, x.shape[1])
            member = torch.zeros_like(r, dtype=torch.bool)
            member.scatter_(1, topk_indices(r, k), True)
            agreement.add(i, "router", r > 0, member)
            if module.router.predictor is not None:
                agreement.add(i, "predictor", module.router.predictor(x).squeeze(-1) > 0,
                              member)

        hooks.append(layer.register_forward_pre_hook(score))
    return hooks


@torch.no_grad()
def evaluate(export: str, windows: torch.Tensor, batch: int) -> None:
    losses: dict[str, float] = {}
    fractions: dict[str, float] = {}
    agreement = Agreement()
    for mode, rule in (("topk", None), ("causal", "predictor"), ("causal", "router")):
        model = load_export(export, inference_routing=rule)
        if rule == "predictor" and not model.config.mod_predictor_hidden:
            continue
        hooks = _watch_topk(model, agreement) if mode == "topk" else []
        counts, _ = count_causal_decisions(model)
        total, n = 0.0, 0
        for s in range(0, len(windows), batch):
            w = windows[s : s + batch]
            logits = model(w[:, :-1], mode)
            total += F.cross_entropy(logits.flatten(0, 1), w[:, 1:].flatten(),
                                     reduction="sum").item()
            n += w[:, 1:].numel()
        for h in hooks:
            h.remove()
        label = "top-k (as trained)" if mode == "topk" else f"causal, {rule}"
        losses[label] = total / n
        if counts[1]:
            fractions[label] = counts[0] / counts[1]

    c = model.config
    print(f"{len(windows)} validation windows of {windows.shape[1] - 1} tokens; routed layers "
          f"{c.mod_routed_layers}, capacity {c.mod_capacity} "
          f"(k = {tokens_per_row(c.mod_capacity, windows.shape[1] - 1)})\n")
    print("| layer | causal rule | agreement with top-k | precision | recall |")
    print("|---|---|---|---|---|")
    for layer, rule, acc, precision, recall in agreement.rows():
        print(f"| {layer} | {rule} | {acc:.2%} | {precision:.2%} | {recall:.2%} |")
    print("\n| routing | validation loss | tokens routed (routed layers) |")
    print("|---|---|---|")
    for label, loss in losses.items():
        fraction = fractions.get(label)
        routed = f"{fraction:.1%}" if fraction is not None else f"{c.mod_capacity:.1%} (k/S)"
        print(f"| {label} | {loss:.4f} | {routed} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("export", help="MoD export (modtrain convert)")
    p.add_argument("--store", required=True, help="token store the model was trained on")
    p.add_argument("--val-fraction", type=float, default=0.1, help="as data.val_fraction")
    p.add_argument("--seq-length", type=int, default=0, help="0: the model's context")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    seq = args.seq_length or load_export(args.export).config.max_position_embeddings
    evaluate(args.export, validation_windows(args.store, args.val_fraction, seq), args.batch)


if __name__ == "__main__":
    main()
