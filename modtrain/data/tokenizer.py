"""SentencePiece tokenizers: training and a thin loading wrapper with a content hash.

Text goes through unchanged (identity normalisation, no dummy prefix, newline as a
symbol of its own), so decode(encode(text)) == text for any text the model covers.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm

from modtrain.errors import ModtrainError
from modtrain.progress_bar import bar

MODEL_TYPES = ("char", "bpe", "unigram")
UNK_ID, EOS_ID = 0, 1


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _lines(paths: Iterable[Path], progress=None) -> Iterator[str]:
    """Non-empty lines of the files; `progress` (a bar) advances by the bytes read."""
    for path in paths:
        with open(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                if progress is not None:
                    progress.update(len(raw))
                try:
                    line = raw.decode("utf-8").rstrip("\n")
                except UnicodeDecodeError as e:
                    raise ModtrainError(
                        f"corpus file {path} line {number} is not UTF-8 (byte {e.start} of the "
                        "line); convert the file to UTF-8 or leave it out") from None
                if line:
                    yield line


class _Lines:
    """_lines for SentencePiece, which reports an error raised by its iterator as a
    RuntimeError with a traceback in its text: keep the error to raise it whole."""

    def __init__(self, paths: list[Path], progress) -> None:
        self.lines = _lines(paths, progress)
        self.error: ModtrainError | None = None

    def __iter__(self) -> Iterator[str]:
        try:
            yield from self.lines
        except ModtrainError as e:
            self.error = e
            raise


# tokenizer/NAME.yaml keys -> train_tokenizer arguments
SPEC_KEYS = {"type": "model_type", "vocab_size": "vocab_size",
             "input_sentence_size": "max_sentences", "shuffle_input_sentence": "shuffle",
             "character_coverage": "character_coverage", "num_threads": "num_threads",
             "max_sentence_length": "max_sentence_length", "seed": "seed"}


def load_spec(path: str | Path) -> dict[str, Any]:
    """A tokenizer spec (tokenizer/NAME.yaml) as train_tokenizer keyword arguments."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ModtrainError(f"tokenizer spec {path} does not exist; see tokenizer/*.yaml")
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(spec) - set(SPEC_KEYS)) if isinstance(spec, dict) else ["(not a mapping)"]
    if unknown:
        raise ModtrainError(f"tokenizer spec {path}: unknown keys {unknown}; allowed: "
                            + ", ".join(SPEC_KEYS))
    return {SPEC_KEYS[k]: v for k, v in spec.items()}


def usable_cores() -> int:
    """Cores this process may run on (a Slurm allocation's, not the whole node's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def train_tokenizer(
    inputs: Sequence[str | Path],
    out: str | Path,
    model_type: str = "bpe",
    vocab_size: int = 8000,
    max_sentences: int = 2_000_000,
    seed: int = 0,
    shuffle: bool = True,
    character_coverage: float = 1.0,
    num_threads: int = 0,
    max_sentence_length: int = 0,
    overwrite: bool = False,
) -> Path:
    """Train a SentencePiece model on text files; returns the path of `<out>.model`.

    At most `max_sentences` lines, sampled uniformly when `shuffle`, are kept in memory;
    `num_threads` 0 uses every usable core. An existing `<out>.model` is replaced only with
    `overwrite` (stores built with it record its hash)."""
    if model_type not in MODEL_TYPES:
        raise ModtrainError(f"tokenizer type {model_type!r} is unknown; use one of {MODEL_TYPES}")
    paths = [Path(p) for p in inputs]
    for p in paths:
        if not p.is_file():
            raise ModtrainError(f"corpus file {p} does not exist; pass existing text files")
        if p.stat().st_size == 0 or not any(True for _ in _lines([p])):
            raise ModtrainError(f"corpus file {p} is empty; pass a file with text in it")
    out = Path(str(out).removesuffix(".model"))
    final = out.with_name(out.name + ".model")
    if final.exists() and not overwrite:
        raise ModtrainError(f"tokenizer {final} already exists (token stores built with it check "
                            "its hash); pass --overwrite to replace it or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_prefix = out.with_name(out.name + ".tmp")
    spm.set_random_generator_seed(seed)  # sentence sampling; same corpus -> same model
    try:
        _train_spm(paths, tmp_prefix, model_type, vocab_size, max_sentences,
                   {"shuffle_input_sentence": bool(shuffle),
                    "character_coverage": float(character_coverage),
                    "num_threads": int(num_threads) or usable_cores(),
                    **({"max_sentence_length": int(max_sentence_length)}
                       if max_sentence_length else {})})
    except RuntimeError as e:  # SentencePiece reports bad settings as RuntimeError
        reason = str(e).split("]")[-1].strip() or str(e)
        raise ModtrainError(f"SentencePiece training failed: {reason}") from None
    Path(str(tmp_prefix) + ".model").replace(final)
    Path(str(tmp_prefix) + ".vocab").replace(out.with_name(out.name + ".vocab"))
    return final


def _train_spm(
    paths: list[Path], prefix: Path, model_type: str, vocab_size: int, max_sentences: int,
    sampling: dict[str, Any],
) -> None:
    # SentencePiece reports no progress of its own: the bar shows the reading of the corpus
    # (its sampling of sentences); training the vocabulary follows, without one.
    reading = bar(total=sum(p.stat().st_size for p in paths), desc="tokenizer: reading",
                  unit="B", unit_scale=True)
    lines = _Lines(paths, reading)
    try:
        _spm_train(lines, prefix, model_type, vocab_size, max_sentences, sampling)
    except RuntimeError:
        if lines.error is not None:  # a line that is not UTF-8: our message, not its traceback
            raise lines.error from None
        raise
    reading.close()


def _spm_train(
    lines: _Lines, prefix: Path, model_type: str, vocab_size: int, max_sentences: int,
    sampling: dict[str, Any],
) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=str(prefix),
        model_type=model_type,
        vocab_size=vocab_size,
        # A character model's vocabulary is the character set, whatever vocab_size says.
        hard_vocab_limit=model_type != "char",
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        split_by_whitespace=model_type != "char",
        allow_whitespace_only_pieces=True,
        user_defined_symbols=["\n"],
        byte_fallback=model_type != "char",
        unk_id=UNK_ID,
        eos_id=EOS_ID,
        bos_id=-1,
        pad_id=-1,
        input_sentence_size=max_sentences,
        minloglevel=2,
        **sampling,  # shuffle_input_sentence, character_coverage, num_threads, ...
    )


class Tokenizer:
    """A loaded SentencePiece model with the identity needed to match it to data stores."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise ModtrainError(
                f"tokenizer {path} does not exist; train one with 'modtrain tokenizer train'"
            )
        self.path = path
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(path))
        except RuntimeError:  # SentencePiece's report of a file that is not a model
            raise ModtrainError(f"tokenizer {path} is not a SentencePiece model (damaged or "
                                "truncated); pass the .model file 'modtrain tokenizer train' "
                                "wrote") from None
        self.sha256 = file_sha256(path)

    @property
    def vocab_size(self) -> int:
        return self.sp.vocab_size()

    @property
    def eos_id(self) -> int:
        return self.sp.eos_id()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """Token ids of each text as int32 arrays, on the calling thread only.

        One thread: parallelism comes from worker processes, which must not oversubscribe.
        """
        try:
            return self.sp.encode(texts, num_threads=1, return_type="numpy")
        except ValueError:  # sentencepiece < 0.2.1 has no numpy output
            return [np.asarray(ids, dtype=np.int32) for ids in self.sp.encode(texts, num_threads=1)]

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids)
