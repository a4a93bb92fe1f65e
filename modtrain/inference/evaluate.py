"""`modtrain eval`: EleutherAI's lm-evaluation-harness on an export (local task files only)."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from modtrain.data.tokenizer import Tokenizer
from modtrain.errors import ModtrainError
from modtrain.inference.export import read_export_config
from modtrain.inference.hf_template import REMOTE_CODE_FILES
from modtrain.resources import TINYSHAKESPEARE

TASK_DIR = TINYSHAKESPEARE.with_name("eval")
SHIPPED = {p.stem: p for p in TASK_DIR.glob("*.yaml")}  # task name -> its YAML
PASSAGES = 200  # speeches from the corpus's last tenth in the shipped perplexity task


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_remote_code(export: Path) -> None:
    """transformers runs an MoD/MoE export's modelling code: only modtrain's own is run."""
    template = Path(__file__).with_name("hf_template")
    for name in REMOTE_CODE_FILES:
        if not (export / name).is_file() or _sha(export / name) != _sha(template / name):
            raise ModtrainError(
                f"{export / name} is not the modelling code this modtrain writes, and "
                "loading it would run it; export again with 'modtrain convert'")


def shakespeare_passages(count: int = PASSAGES) -> list[str]:
    """Whole speeches (blank-line separated) from the corpus's validation tail."""
    text = TINYSHAKESPEARE.read_text()
    tail = text[int(len(text) * 0.9):]
    speeches = [s.strip() + "\n" for s in tail.split("\n\n")[1:] if s.strip()]
    return speeches[:count]


def _task_dir(out: Path) -> Path:
    """The shipped task YAMLs with their data files written beside them."""
    data = out / "shakespeare_ppl.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in shakespeare_passages()))
    for path in SHIPPED.values():
        (out / path.name).write_text(path.read_text().replace("DATA_FILE", str(data)))
    return out


class ExportLM:
    """An lm-eval language model over an export: the Hugging Face model transformers loads,
    with the export's SentencePiece tokenizer (an export has no Hugging Face tokenizer)."""

    def __init__(self, export: Path, device: str = "cpu", batch_size: int = 1) -> None:
        from transformers import AutoModelForCausalLM

        config = read_export_config(export)
        remote = "auto_map" in config  # MoD/MoE: modtrain's modelling code
        if remote:
            _check_remote_code(export)
        try:
            self.model = AutoModelForCausalLM.from_pretrained(
                export, trust_remote_code=remote, local_files_only=True).to(device).eval()
            self.tokenizer = Tokenizer(export / "tokenizer.model")
        except Exception as e:  # transformers' errors have no common type
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise ModtrainError(
                f"{export} cannot be loaded for evaluation ({type(e).__name__}: {first}); "
                "export it again with 'modtrain convert RUN_DIR --out EXPORT_DIR'") from None
        self.device = device
        self.max_length = int(config.get("max_position_embeddings", 2048))
        self.eos = self.tokenizer.eos_id

    @torch.no_grad()
    def logprobs(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        """(sum of log p(continuation | context), whether greedy decoding gives it), the
        whole sequence cut to the model's window from the left."""
        ids = (context + continuation)[-(self.max_length + 1):]
        inputs = torch.tensor([ids[:-1]], device=self.device)
        logits = self.model(inputs).logits[0, -len(continuation):].float()
        logp = torch.log_softmax(logits, dim=-1)
        target = torch.tensor(continuation, device=self.device)
        picked = logp.gather(1, target[:, None])[:, 0]
        return float(picked.sum()), bool((logp.argmax(dim=-1) == target).all())

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        out = []
        for request in requests:
            context, continuation = request.args
            ctx = self.tokenizer.encode(context) if context else [self.eos]
            out.append(self.logprobs(ctx, self.tokenizer.encode(continuation)))
        return out

    def loglikelihood_rolling(self, requests) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        out = []
        for request in requests:
            windows = get_rolling_token_windows(
                token_list=self.tokenizer.encode(request.args[0]), prefix_token=self.eos,
                max_seq_len=self.max_length, context_len=1)
            out.append(sum(self.logprobs(*make_disjoint_window(w))[0] for w in windows))
        return out

    @torch.no_grad()
    def generate_until(self, requests) -> list[str]:
        out = []
        for request in requests:
            context, kwargs = request.args
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else until
            ids = (self.tokenizer.encode(context) or [self.eos])[-self.max_length // 2:]
            new = self.model.generate(torch.tensor([ids], device=self.device),
                                      max_new_tokens=int(kwargs.get("max_gen_toks", 64)),
                                      do_sample=False)[0, len(ids):]
            text = self.tokenizer.decode(new.tolist())
            for stop in until:
                text = text.split(stop)[0]
            out.append(text)
        return out


def _harness_lm(model: ExportLM):
    """ExportLM as lm-eval's LM subclass (lm-eval is imported only when evaluating)."""
    from lm_eval.api.model import LM

    class HarnessLM(LM):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def loglikelihood(self, requests):
            return model.loglikelihood(requests)

        def loglikelihood_rolling(self, requests):
            return model.loglikelihood_rolling(requests)

        def generate_until(self, requests):
            return model.generate_until(requests)

    return HarnessLM()


def evaluate(export_dir: str | Path, tasks: list[str], limit: int | None = None,
             device: str = "cpu") -> dict[str, Any]:
    """lm-eval's results for `tasks` (the shipped ones, or any the harness has locally)."""
    try:
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ModtrainError("modtrain eval needs lm-evaluation-harness: "
                            "pip install 'modtrain[eval]'") from None
    export = Path(export_dir)
    lm = _harness_lm(ExportLM(export, device))
    with tempfile.TemporaryDirectory(prefix="modtrain-eval-") as tmp:
        manager = TaskManager(include_path=str(_task_dir(Path(tmp))),
                              include_defaults=not set(tasks) <= set(SHIPPED))
        unknown = [t for t in tasks if t not in manager.all_tasks]
        if unknown:
            raise ModtrainError(
                f"unknown task {', '.join(unknown)}; shipped: {', '.join(sorted(SHIPPED))} "
                "(others: lm-eval's task names, see docs/evaluation.md)")
        results = simple_evaluate(model=lm, tasks=tasks, limit=limit, task_manager=manager,
                                  log_samples=False)
    return {"export": str(export), "results": results["results"],
            "versions": results.get("versions", {}), "n-samples": results.get("n-samples", {}),
            "limit": limit}
