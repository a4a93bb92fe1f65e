"""Autoregressive sampling from an export with a key/value cache.

The model is modtrain's plain-torch one (hf_template/modtrain_core.py), loaded from the
export; routed layers decide causally per token and cache only their routed tokens.
Context window: the model was trained on at most max_position_embeddings tokens. When the
context would grow past that, it restarts from its last half (one prefill of those tokens,
positions from 0 again), so every prediction sees between half and all of a window.
A prompt longer than the window starts from its last half window too (generate_text says so
on stderr). A window past the training context (--context) needs RoPE scaling in the
export (model.rope_scaling), up to factor x its original context. Without a cache
(use_cache=False) each step recomputes exactly that context,
which is what the tests compare against.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from modtrain import log
from modtrain.data.tokenizer import Tokenizer
from modtrain.errors import ModtrainError
from modtrain.inference.export import check_vocabulary, load_export, read_export_config
from modtrain.inference.hf_layout import model_config
from modtrain.inference.hf_template.modtrain_core import ModtrainLM
from modtrain.inference.placement import resolve_device, resolve_dtype
from modtrain.inference.sampling import Sampling, next_tokens

StopFn = Callable[[list[int]], bool]  # a row's generated ids -> stop that row?


@dataclass
class Generation:
    ids: torch.Tensor  # [B, prompt + generated]
    new_tokens: int  # generated per row
    prefill_seconds: float  # the first prefill (the prompt)
    seconds: float  # everything, prefill included
    cache_used_bytes: int = 0  # largest key/value footprint of the stored tokens
    cache_allocated_bytes: int = 0  # largest key/value memory allocated
    # Processor time of this process (all its threads): unlike `seconds`, it leaves out
    # the time other processes had the cores, for comparisons on a busy machine.
    prefill_cpu_seconds: float = 0.0
    cpu_seconds: float = 0.0


def restart_length(window: int) -> int:
    """Tokens the context keeps when it outgrows the window: the last half window."""
    return max(1, window // 2)


def context_window(export_config: dict, context: int | None) -> int:
    """The window sampling uses: the training context (max_position_embeddings), or
    `context`; past the training context only with RoPE scaling, up to its scaled context."""
    trained = export_config["max_position_embeddings"]
    if context is None or context == trained:
        return trained
    if context < 2:
        raise ModtrainError(f"--context {context} must be at least 2 tokens")
    if context < trained:
        return context
    block = export_config.get("modtrain")
    saved = block.get("model") if isinstance(block, dict) else None
    m = model_config(saved) if isinstance(saved, dict) and "max_seq_length" in saved else None
    if m is None or m.rope_scaling.type == "none":
        raise ModtrainError(
            f"--context {context} is past the model's {trained}-token training context and "
            "its positions were never trained; resume training with model.rope_scaling set "
            "(docs/long_context.md), or drop --context")
    limit = m.rope_scaling.scaled_context(m.max_seq_length)
    if context > limit:
        raise ModtrainError(
            f"--context {context} is past the scaled context of this export: "
            f"model.rope_scaling (type={m.rope_scaling.type}, factor={m.rope_scaling.factor}) "
            f"reaches {limit} tokens; use --context {limit} or less")
    return context


def unknown_characters(tokenizer: Tokenizer, text: str) -> list[str]:
    """Characters of `text` that the tokenizer encodes as its unknown token, in order."""
    unk = tokenizer.sp.unk_id()
    if unk < 0 or unk not in tokenizer.encode(text):
        return []
    return [ch for ch in dict.fromkeys(text) if unk in tokenizer.encode(ch)]


@torch.no_grad()
def generate_ids(
    model: ModtrainLM,
    prompt: torch.Tensor,
    max_new_tokens: int,
    sampling: Sampling | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    stop: StopFn | None = None,
    window: int = 0,
) -> Generation:
    """prompt: [B, T] ids (rows of equal length); greedy unless `sampling` says otherwise.
    Rows route independently. window: the context's longest length (0: the model's
    max_position_embeddings; more only through context_window)."""
    sampling = sampling or Sampling(temperature=0.0)
    window = window or model.config.max_position_embeddings
    keep = restart_length(window)
    batch, prompt_len = prompt.shape
    ids, start, cache = prompt, 0, None
    done = [False] * batch
    used = allocated = 0
    prefill_s = prefill_cpu = 0.0
    t0, cpu0 = time.perf_counter(), time.process_time()
    for step in range(max_new_tokens):
        if ids.shape[1] - start > window:  # restart the context from its last `keep` tokens
            start, cache = ids.shape[1] - keep, None
        if not use_cache:
            logits = model(ids[:, start:], "causal", last_only=True)
        elif cache is None:
            cache = model.new_cache(batch, max_length=window)
            logits = model(ids[:, start:], "causal", cache, last_only=True)
        else:
            logits = model(ids[:, -1:], "causal", cache, last_only=True)
        if step == 0:
            prefill_s, prefill_cpu = time.perf_counter() - t0, time.process_time() - cpu0
        if cache is not None:
            used = max(used, cache.used_bytes())
            allocated = max(allocated, cache.allocated_bytes())
        ids = torch.cat([ids, next_tokens(logits[:, -1], sampling, generator)], dim=1)
        if stop is not None:
            done = [d or stop(ids[b, prompt_len:].tolist()) for b, d in enumerate(done)]
            if all(done):
                break
    return Generation(ids, ids.shape[1] - prompt_len, prefill_s, time.perf_counter() - t0,
                      used, allocated, prefill_cpu, time.process_time() - cpu0)


def generate_text(
    export_dir: str | Path,
    prompt: str,
    max_new_tokens: int,
    num_samples: int = 1,
    sampling: Sampling | None = None,
    seed: int = 0,
    stop: str | None = None,
    use_cache: bool = True,
    routing: str | None = None,
    device: str = "cpu",
    dtype: str = "fp32",
    context: int | None = None,
) -> tuple[list[str], Generation]:
    """Sample `num_samples` continuations of `prompt`; each ends before `stop` if it occurs.
    device: cpu, cuda or cuda:N; dtype: fp32, bf16 or fp16 (see inference/placement.py);
    context: the window in tokens (None: the training context; see context_window)."""
    sampling = sampling or Sampling(temperature=0.8)
    where = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, where)
    _check_request(export_dir, max_new_tokens, num_samples, stop, routing)
    model = load_export(export_dir, torch_dtype, inference_routing=routing).to(where)
    window = context_window(read_export_config(export_dir), context)  # config.json checked
    tokenizer = _export_tokenizer(export_dir, model.config.vocab_size)
    ids = _prompt_ids(tokenizer, prompt, window, max_new_tokens)
    prompt_ids = torch.tensor([ids] * num_samples, dtype=torch.long, device=where)
    stop_fn = None if stop is None else (lambda gen: stop in tokenizer.decode(gen))
    # Sampling draws on the model's device (multinomial needs a generator there).
    generator = torch.Generator(device=where).manual_seed(seed)
    result = generate_ids(model, prompt_ids, max_new_tokens, sampling, generator, use_cache,
                          stop_fn, window)
    head = tokenizer.decode(ids)
    texts = []
    for row in result.ids:
        text = tokenizer.decode(row[len(ids):].tolist())
        if stop is not None and stop in text:
            text = text[: text.index(stop)]
        texts.append(head + text)
    return texts, result


def _check_request(export_dir: str | Path, max_new_tokens: int, num_samples: int,
                   stop: str | None, routing: str | None) -> None:
    """Refuse, before the export is loaded, options that cannot apply."""
    if max_new_tokens < 0:
        raise ModtrainError(f"--max-new-tokens {max_new_tokens} is negative")
    if num_samples < 1:
        raise ModtrainError(f"--num-samples {num_samples} must be at least 1")
    if stop == "":
        raise ModtrainError("--stop is empty; give the text that ends a sample")
    if routing is not None and not read_export_config(export_dir).get("mod_routed_layers"):
        raise ModtrainError(f"--routing {routing} does not apply: {export_dir} is a dense export "
                            "(no routed layers); drop --routing")


def _export_tokenizer(export_dir: str | Path, vocab_size: int) -> Tokenizer:
    """The export's tokenizer.model, checked against the model's vocabulary."""
    if not (Path(export_dir) / "tokenizer.model").is_file():
        raise ModtrainError(f"{export_dir} has no tokenizer.model; convert the checkpoint "
                            "again with --tokenizer PATH.model")
    tokenizer = Tokenizer(Path(export_dir) / "tokenizer.model")
    check_vocabulary(tokenizer.vocab_size, vocab_size, tokenizer.path,
                     "convert the checkpoint again with --tokenizer set to the one training used")
    return tokenizer


def _prompt_ids(tokenizer: Tokenizer, prompt: str, window: int, max_new_tokens: int) -> list[int]:
    """The prompt's token ids (the end-of-text id for an empty prompt), with a warning for
    characters the vocabulary lacks and for a prompt longer than the window."""
    unknown = unknown_characters(tokenizer, prompt)
    if unknown:
        log.warning(f"the prompt's characters {', '.join(map(repr, unknown))} are not in "
                    "the tokenizer's vocabulary; the model sees each as the unknown token (⁇)")
    ids = tokenizer.encode(prompt) or [tokenizer.eos_id]
    if len(ids) > window and max_new_tokens > 0:
        log.warning(f"the prompt is {len(ids)} tokens, longer than the model's {window}-token "
                    f"window; kept its last {restart_length(window)} of {len(ids)} tokens (see "
                    "'modtrain generate --help')")
    return ids
