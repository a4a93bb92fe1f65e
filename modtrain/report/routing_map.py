"""`modtrain routing`: the paper's routing picture for a text, from an export or a run.

Top: a token x routed-layer heat map of the router weight r = w^T x, with the tokens
top-k routing sends through the block framed and the causal decision (what sampling
uses) dotted. Bottom: the fraction of tokens routed at each position over validation
windows of a store (top-k and causal), which shows whether routing depends on position.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from modtrain.checkpoint.read.reader import read_checkpoint
from modtrain.data.read.dataset import ValidationSequences
from modtrain.data.read.index import train_val_split
from modtrain.data.read.store import TokenStore
from modtrain.data.tokenizer import Tokenizer
from modtrain.errors import ModtrainError
from modtrain.inference.export import load_export, read_export_config
from modtrain.inference.hf_layout import hf_config, to_hf_tensors
from modtrain.inference.hf_template.modtrain_core import (
    CoreConfig,
    ModtrainLM,
    tokens_per_row,
    topk_indices,
)
from modtrain.inference.placement import resolve_device, resolve_dtype
from modtrain.report import figures


@dataclass
class RoutedModel:
    model: ModtrainLM
    tokenizer: Tokenizer
    store: Path | None  # the training store, when the source is a run


def _existing(*candidates: Path) -> Path | None:
    return next((p for p in candidates if p.is_file() or p.is_dir()), None)


def load_routed_model(path: str | Path) -> RoutedModel:
    """An export directory, or a run / checkpoint directory (its weights read in place)."""
    path = Path(path)
    if (path / "config.json").is_file():
        read_export_config(path)  # one-line error when it is not an export
        return RoutedModel(load_export(path), Tokenizer(path / "tokenizer.model"), None)
    ckpt = read_checkpoint(path)
    model_section = ckpt.config["model"]
    core = CoreConfig.from_dict(hf_config(model_section, "fp32", ckpt.step, None))
    model = ModtrainLM(core)
    missing, unexpected = model.load_state_dict(
        to_hf_tensors(ckpt.tensors, model_section), strict=False)
    if [k for k in missing if k != "lm_head.weight"] or unexpected:
        raise ModtrainError(f"{ckpt.tag_dir} does not match its config; convert it with "
                            "'modtrain convert' and pass the export")
    run_dir = ckpt.tag_dir.parent.parent  # RUN/checkpoints/TAG
    data = ckpt.config.get("data", {})
    tokenizer = _existing(Path(data.get("tokenizer", "")), run_dir / data.get("tokenizer", ""))
    if tokenizer is None:
        raise ModtrainError(f"the run's tokenizer {data.get('tokenizer')} is not found; run "
                            "from the directory training ran in, or convert the run first")
    store = _existing(Path(data.get("store", "")), run_dir / data.get("store", ""))
    return RoutedModel(model.eval(), Tokenizer(tokenizer), store)


@dataclass
class Routing:
    """Per routed layer: router weights r [B, T], top-k and causal decisions [B, T]."""

    layers: list[int]
    weights: list[np.ndarray]
    topk: list[np.ndarray]
    causal: list[np.ndarray]


@torch.no_grad()
def route(model: ModtrainLM, ids: torch.Tensor) -> Routing:
    """Run the model once with top-k routing, recording every router's scores and choices."""
    layers = [i for i, layer in enumerate(model.model.layers) if layer.router is not None]
    if not layers:
        raise ModtrainError("this model has no routed layers (a dense model): there is no "
                            "routing to draw")
    captured: dict[int, torch.Tensor] = {}
    hooks = [model.model.layers[i].register_forward_pre_hook(
        lambda _m, args, i=i: captured.__setitem__(i, args[0])) for i in layers]
    try:
        model(ids, routing="topk")
    finally:
        for hook in hooks:
            hook.remove()
    result = Routing(layers, [], [], [])
    for i in layers:
        layer = model.model.layers[i]
        x = captured[i]
        r = layer.router.scores(x)  # fp32, as the layer computed it
        k = tokens_per_row(layer.capacity, r.shape[1])
        chosen = torch.zeros_like(r, dtype=torch.bool)
        chosen.scatter_(1, topk_indices(r, k), True)
        result.weights.append(r.cpu().numpy())
        result.topk.append(chosen.cpu().numpy())
        result.causal.append(layer.router.causal_mask(x, r).cpu().numpy())
    return result


def position_fractions(model: ModtrainLM, store: Path, windows: int, seq_length: int,
                       val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Fraction routed at each position [T], top-k and causal, over validation windows."""
    tokens = TokenStore(store)
    _, val = train_val_split(tokens.num_tokens, val_fraction)
    sequences = ValidationSequences(tokens, val, seq_length, windows)
    ids = torch.from_numpy(np.stack([sequences[i][:seq_length] for i in range(len(sequences))])
                           .astype(np.int64)).to(model.lm_head.weight.device)
    routing = route(model, ids)
    return (np.mean([t.mean(axis=0) for t in routing.topk], axis=0),
            np.mean([c.mean(axis=0) for c in routing.causal], axis=0))


def _label(piece: str) -> str:
    return piece.replace("\n", "\\n").replace(" ", "\u2423") or "\u2205"


def draw_routing(source: str | Path, text: str, out: str | Path, store: str | Path | None = None,
                 windows: int = 64, device: str = "cpu", dtype: str = "fp32") -> Path:
    """Write the routing picture of `text` (and of `store`'s validation windows) to `out`,
    running the model on `device` in `dtype` (see inference/placement.py)."""
    where = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, where)
    loaded = load_routed_model(source)
    loaded.model.to(where, torch_dtype)
    limit = loaded.model.config.max_position_embeddings
    ids = loaded.tokenizer.encode(text)
    if not ids:
        raise ModtrainError("--text is empty after tokenisation; pass some text")
    if len(ids) > limit:
        raise ModtrainError(f"--text is {len(ids)} tokens, more than the model's {limit}; "
                            "pass a shorter text")
    routing = route(loaded.model, torch.tensor([ids], device=where))
    store = Path(store) if store else loaded.store
    fractions = None if store is None else position_fractions(loaded.model, store, windows, limit)

    plt = figures.pyplot()
    rows = 2 if fractions is not None else 1
    width = max(8.0, 0.22 * len(ids) + 2)
    height = 1.2 + 0.5 * len(routing.layers) + 3 * (rows - 1)
    fig, axes = plt.subplots(rows, 1, figsize=(width, height), layout="constrained", squeeze=False,
                             height_ratios=[max(1, len(routing.layers)), 3][:rows])
    ax = axes[0][0]
    weights = np.stack([w[0] for w in routing.weights])
    bound = float(np.abs(weights).max()) or 1.0
    image = ax.imshow(weights, cmap="coolwarm", vmin=-bound, vmax=bound, aspect="auto",
                      interpolation="nearest")
    for row, (chosen, causal) in enumerate(zip(routing.topk, routing.causal)):
        for col in np.flatnonzero(chosen[0]):
            ax.add_patch(plt.Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, lw=1.5,
                                       ec="black"))
        cols = np.flatnonzero(causal[0])
        ax.plot(cols, np.full(len(cols), row), "k.", ms=3)
    pieces = [_label(loaded.tokenizer.sp.id_to_piece(i)) for i in ids]
    ax.set_xticks(range(len(ids)), pieces, fontsize=7, rotation=90)
    ax.set_yticks(range(len(routing.layers)), [f"layer {i}" for i in routing.layers])
    ax.set_title("router weight r per token (framed: top-k routed; dot: causal decision)")
    fig.colorbar(image, ax=ax, label="r", fraction=0.02)
    if fractions is not None and store is not None:
        topk, causal = fractions
        ax2 = axes[1][0]
        ax2.plot(topk, label="top-k")
        ax2.plot(causal, label="causal decision", ls="--")
        ax2.set_xlabel("position in the window")
        ax2.set_ylabel("fraction routed")
        ax2.set_ylim(0, 1)
        ax2.set_title(f"routed fraction by position, {windows} validation windows of {store.name}")
        ax2.grid(alpha=0.3)
        ax2.legend()
    return figures.save(fig, out)
