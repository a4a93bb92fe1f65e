"""One slice of the inputs -> one *part*: raw token ids and the positions where documents end.

A part is a directory BUILD/parts/NNNNNN/ holding `tokens.bin` (ids in the store's dtype,
little-endian), `doc_ends.npy` (token count after each end-of-document token) and
`part.json`. It is written under a temporary name and renamed when complete, so a part
that exists is finished and a resumed run keeps it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from modtrain.data.tokenizer import Tokenizer
from modtrain.data.write.filters import Filter, parse_filter
from modtrain.data.write.plan import Plan
from modtrain.data.write.sources import FORMATS, InputFile, InputReader, Piece
from modtrain.errors import ModtrainError

TOKENS, DOC_ENDS, INFO = "tokens.bin", "doc_ends.npy", "part.json"
SUB_BLOCK_CHARS = 1 << 16  # SentencePiece is fastest on many mid-sized strings
BATCH_CHARS = 1 << 20  # records are encoded in batches of about this many characters

Report = Callable[[int, int], None]  # (text bytes, tokens) just encoded


@dataclass(frozen=True)
class PartInfo:
    num_tokens: int
    num_documents: int  # documents that end in this part
    text_bytes: int
    skipped_documents: int  # JSON records with empty text


def part_dir(build: Path, index: int) -> Path:
    return build / "parts" / f"{index:06d}"


def part_done(build: Path, index: int) -> bool:
    return (part_dir(build, index) / INFO).is_file()


def read_info(build: Path, index: int) -> PartInfo:
    return PartInfo(**json.loads((part_dir(build, index) / INFO).read_text()))


def part_tokens(build: Path, index: int, dtype: np.dtype, count: int) -> np.ndarray:
    """The part's ids, memory-mapped (nothing is read until used)."""
    if count == 0:
        return np.empty(0, dtype=dtype)
    dtype = np.dtype(dtype).newbyteorder("<")
    return np.memmap(part_dir(build, index) / TOKENS, dtype=dtype, mode="r", shape=(count,))


def part_doc_ends(build: Path, index: int) -> np.ndarray:
    return np.load(part_dir(build, index) / DOC_ENDS)


class PartWriter:
    """Streams ids to a part directory; `close` makes it complete (atomic rename)."""

    def __init__(self, final: Path, dtype: np.dtype, eos_id: int) -> None:
        self.final = final
        self.tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.eos = np.array([eos_id], dtype=self.dtype)
        self._file = open(self.tmp / TOKENS, "wb")  # noqa: SIM115 - closed in close()
        self.count = 0
        self.doc_ends: list[int] = []
        self.text_bytes = 0
        self.skipped = 0

    def add(self, ids: np.ndarray) -> None:
        self._file.write(np.asarray(ids).astype(self.dtype, copy=False).tobytes())
        self.count += len(ids)

    def end_document(self, with_eos: bool = True) -> None:
        if with_eos:
            self.add(self.eos)
        self.doc_ends.append(self.count)

    def add_documents(self, docs: list[np.ndarray]) -> None:
        """Whole documents, each followed by EOS, in one write."""
        if not docs:
            return
        pieces = [self.eos] * (2 * len(docs))
        pieces[::2] = docs
        ends = self.count + np.cumsum([len(d) + 1 for d in docs])
        self.add(np.concatenate(pieces))
        self.doc_ends.extend(ends.tolist())

    def close(self) -> PartInfo:
        self._file.close()
        np.save(self.tmp / DOC_ENDS, np.asarray(self.doc_ends, dtype=np.uint64))
        info = PartInfo(self.count, len(self.doc_ends), self.text_bytes, self.skipped)
        (self.tmp / INFO).write_text(json.dumps(asdict(info)))
        if self.final.exists():  # another process finished the same slice first
            shutil.rmtree(self.tmp)
        else:
            self.tmp.rename(self.final)
        return info


def _sub_blocks(text: str) -> list[str]:
    """Newline-aligned pieces of ~SUB_BLOCK_CHARS; their encodings concatenate exactly."""
    out, start = [], 0
    while start < len(text):
        end = min(len(text), start + SUB_BLOCK_CHARS)
        if end < len(text):
            newline = text.rfind("\n", start, end)
            end = newline + 1 if newline >= start else end
        out.append(text[start:end])
        start = end
    return out


def _encode_one_document(tok: Tokenizer, w: PartWriter, reader: InputReader, f: InputFile,
                         piece: Piece, field: str, report: Report, where: Filter | None) -> None:
    """A piece of a file that is one document: its texts are consecutive fragments."""
    blank = True
    for size, texts in reader.texts(f, piece, field):
        before = w.count
        for text in texts:
            blank = blank and not text.strip()
            for ids in tok.encode_batch(_sub_blocks(text)):
                w.add(ids)
        w.text_bytes += size
        report(size, w.count - before)
    whole = piece.start == 0 and (f.compression != "none" or piece.stop == f.size)
    if whole and blank:
        raise ModtrainError(f"corpus file {f.path} is empty; remove it or add text")
    if f.compression != "none" or piece.stop == f.size:  # the file (= document) ends here
        w.end_document()
        report(0, 1)


def _encode_documents(tok: Tokenizer, w: PartWriter, reader: InputReader, f: InputFile,
                      piece: Piece, field: str, report: Report, where: Filter | None) -> None:
    """A piece of a file of records: each text is a document, an empty one is skipped."""
    batch: list[str] = []
    chars = 0

    def flush() -> None:
        nonlocal chars
        w.add_documents(tok.encode_batch(batch))
        batch.clear()
        chars = 0

    for size, texts in reader.texts(f, piece, field, where):
        before = w.count
        for text in texts:
            if not text.strip():
                w.skipped += 1
                continue
            batch.append(text)
            chars += len(text)
            if chars >= BATCH_CHARS:
                flush()
        flush()
        w.text_bytes += size
        report(size, w.count - before)


def encode_slice(build: Path, plan: Plan, index: int, report: Report | None = None) -> PartInfo:
    """Encode slice `index` of the plan into its part (kept if already complete)."""
    if part_done(build, index):
        return read_info(build, index)
    tok = Tokenizer(plan.tokenizer)
    if tok.sha256 != plan.tokenizer_sha256:
        raise ModtrainError(
            f"tokenizer {plan.tokenizer} changed while the store was being prepared; "
            "rerun 'modtrain data prepare' with --overwrite"
        )
    report = report or (lambda b, t: None)
    w = PartWriter(part_dir(build, index), plan.dtype, plan.eos_id)
    where = parse_filter(plan.filter)
    for piece in plan.slices[index]:
        f = plan.files[piece.file]
        reader = FORMATS[f.kind]
        encode_piece = _encode_one_document if reader.whole_file_document else _encode_documents
        encode_piece(tok, w, reader, f, piece, plan.jsonl_field, report, where)
    return w.close()


def write_documents_part(final: Path, docs: Iterable[np.ndarray], dtype: np.dtype) -> PartInfo:
    """A part from documents already encoded (each ending in its EOS)."""
    w = PartWriter(final, dtype, eos_id=0)
    for doc in docs:
        w.add(doc)
        w.end_document(with_eos=False)
    return w.close()
