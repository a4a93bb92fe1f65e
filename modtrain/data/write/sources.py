"""Input corpora: text and JSON Lines readers, expansion of files/directories/globs, slices.

Each input format is one InputReader subclass (registry.py) decorated with @register, here or in
columnar.py (Parquet, Arrow IPC), and nowhere else: its name (for --format), the file
names it claims under --format auto, how a file is cut into pieces and which texts a
piece holds. Everything else derives from FORMATS:
the --format choices and help, detection by name, slicing, encoding, store attributes.

A *text* file is one document. A *JSON Lines* file holds one document per line, in a
configurable string field. Either may be gzip- or zstd-compressed (detected from the
file's magic bytes). Uncompressed files can be cut at line boundaries into pieces that
are encoded independently: the tokenizer never merges across a newline (it is a symbol
of its own, see tokenizer.py), so encoding the pieces equals encoding the whole.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import IO, cast

from modtrain.data.write.filters import Filter
from modtrain.data.write.registry import (  # noqa: F401 - the registry's names, used here too
    AUTO,
    FORMATS,
    InputFile,
    InputReader,
    Piece,
    register,
)
from modtrain.errors import ModtrainError

COMPRESSED_SUFFIXES = (".gz", ".zst", ".zstd")
BLOCK_BYTES = 1 << 20  # read and encode in line-aligned blocks of about this size
_GZIP_MAGIC, _ZSTD_MAGIC = b"\x1f\x8b", b"\x28\xb5\x2f\xfd"


class LineReader(InputReader):
    """A format of lines (text, JSON Lines): cut at line starts."""

    def pieces(self, index: int, f: InputFile, slice_bytes: int) -> list[Piece]:
        """Input file `index` cut into pieces of about `slice_bytes`, encoded independently.

        At line starts, a compressed file whole (its stream cannot be entered midway).
        """
        if f.compression != "none" or f.size <= slice_bytes:
            return [Piece(index, 0, f.size)]
        pieces, start = [], 0
        while start < f.size:
            stop = _next_line_start(f.path, start + slice_bytes, f.size)
            pieces.append(Piece(index, start, stop))
            start = stop
        return pieces


@register
class TextReader(LineReader):
    name = "text"
    title = "text"
    documents = "one document per file"
    suffixes = ("",)
    whole_file_document = True

    def texts(self, f: InputFile, piece: Piece, field: str,
              where: Filter | None = None) -> Iterator[tuple[int, list[str]]]:
        for block in line_blocks(f, piece):
            yield len(block), [decode_utf8(block, f)]


@register
class JsonLinesReader(LineReader):
    name = "jsonl"
    title = "JSON Lines"
    documents = "one document per line"
    suffixes = (".jsonl", ".ndjson", ".json")
    uses_field = True

    def texts(self, f: InputFile, piece: Piece, field: str,
              where: Filter | None = None) -> Iterator[tuple[int, Iterator[str]]]:
        offset = piece.start if f.compression == "none" else 0
        for block in line_blocks(f, piece):
            yield len(block), jsonl_texts(block, f, field, offset, where)
            offset += len(block)


def format_choices() -> tuple[str, ...]:
    """What --format accepts."""
    return (AUTO, *FORMATS)


def describe_formats() -> str:
    """The formats for help texts: 'text (one document per file) or JSON Lines (...)'."""
    return _either([f"{r.title} ({r.documents})" for r in FORMATS.values()])


def describe_detection() -> str:
    """How --format auto decides: '.jsonl/.ndjson/.json are JSON Lines, others text'."""
    named = [f"{'/'.join(s for s in r.suffixes if s)} are {r.title}"
             for r in FORMATS.values() if any(r.suffixes)]
    rest = [f"others {r.title}" for r in FORMATS.values() if "" in r.suffixes]
    return ", ".join(named + rest)


def _either(items: list[str]) -> str:
    return " or ".join(items) if len(items) < 3 else ", ".join(items[:-1]) + " or " + items[-1]


def _compression(path: Path) -> str:
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic.startswith(_GZIP_MAGIC):
        return "gzip"
    if magic == _ZSTD_MAGIC:
        return "zstd"
    return "none"


def _kind(path: Path, input_format: str) -> str:
    if input_format != AUTO:
        return input_format
    name = path.name
    for suffix in COMPRESSED_SUFFIXES:
        name = name.removesuffix(suffix)
    claims = [(len(s), r.name) for r in FORMATS.values() for s in r.suffixes if name.endswith(s)]
    if not claims:
        raise ModtrainError(f"the format of {path} is not known from its name; pass --format")
    return max(claims, key=lambda c: c[0])[1]  # the longest suffix; ties: registered first


def _expand_one(pattern: str) -> list[Path]:
    path = Path(pattern)
    if path.is_file():
        return [path]
    from modtrain.data.write.columnar import saved_dataset_files

    saved = saved_dataset_files(path) if path.is_dir() else None
    if saved is not None:
        missing = [p for p in saved if not p.is_file()]
        if missing or not saved:
            raise ModtrainError(f"saved dataset {path} lacks its data file "
                                f"{missing[0] if missing else 'data-*.arrow'}; save it again")
        return saved
    if path.is_dir():
        files = [
            p for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        ]
        if not files:
            raise ModtrainError(f"input directory {path} holds no files; pass one with text")
        return sorted(files)
    if glob.has_magic(pattern):
        matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        if not matches:
            raise ModtrainError(f"input pattern {pattern!r} matches no file; check the path")
        return matches
    raise ModtrainError(f"corpus file {path} does not exist; pass existing text files")


def expand_inputs(patterns: list[str | Path], input_format: str = AUTO) -> list[InputFile]:
    """Files, directories (recursively, hidden files skipped) and globs -> sorted input files.

    Order: the order of `patterns`, each expanded in sorted order; duplicates kept once.
    """
    if input_format not in format_choices():
        raise ModtrainError(
            f"input format {input_format!r} is unknown; use one of {format_choices()}"
        )
    if not patterns:
        raise ModtrainError("no input files; pass --input FILE [FILE ...]")
    seen: set[str] = set()
    files = []
    for pattern in patterns:
        for path in _expand_one(str(pattern)):
            key = os.path.realpath(path)
            if key in seen:
                continue
            seen.add(key)
            st = path.stat()
            kind, compression = _kind(path, input_format), _compression(path)
            blank_document = FORMATS[kind].whole_file_document and compression == "none"
            if blank_document and _blank(path, st.st_size):
                raise ModtrainError(f"corpus file {path} is empty; remove it or add text")
            files.append(InputFile(str(path), st.st_size, st.st_mtime_ns, kind, compression))
    return files


def text_files(patterns: list[str | Path]) -> list[Path]:
    """Files, directories and globs expanded as `expand_inputs` does, for readers of plain
    text only (the tokenizer trainer): other formats and compressed files are refused."""
    files = expand_inputs(patterns)
    for f in files:
        if f.kind != TextReader.name or f.compression != "none":
            what = f.compression if f.compression != "none" else FORMATS[f.kind].title
            raise ModtrainError(f"corpus file {f.path} is {what}; tokenizer training reads "
                                "plain text files, pass those (or a directory of them)")
    return [Path(f.path) for f in files]


def _blank(path: Path, size: int) -> bool:
    if size > BLOCK_BYTES:
        return False  # a large file with only whitespace is not worth a full read here
    return not path.read_bytes().strip()


def _next_line_start(path: str, pos: int, size: int) -> int:
    """The first line start at or after byte `pos`."""
    if pos <= 0:
        return 0
    with open(path, "rb") as f:
        f.seek(pos - 1)
        while True:
            block = f.read(1 << 16)
            if not block:
                return size
            i = block.find(b"\n")
            if i >= 0:
                return f.tell() - len(block) + i + 1


def plan_slices(files: list[InputFile], slice_bytes: int) -> list[list[Piece]]:
    """Group the inputs, in order, into slices of about `slice_bytes` each.

    Depends only on the files and `slice_bytes`, never on the number of processes, so a
    resumed run sees the same slices and any process count gives the same store.
    """
    pieces = [p for i, f in enumerate(files) for p in FORMATS[f.kind].pieces(i, f, slice_bytes)]
    slices: list[list[Piece]] = []
    current: list[Piece] = []
    size = 0
    for p in pieces:
        current.append(p)
        size += p.stop - p.start
        if size >= slice_bytes:
            slices.append(current)
            current, size = [], 0
    if current:
        slices.append(current)
    return slices


def _open(f: InputFile) -> IO[bytes]:
    if f.compression == "gzip":
        return cast(IO[bytes], gzip.open(f.path, "rb"))  # a GzipFile is a binary stream
    if f.compression == "zstd":
        import zstandard

        raw = open(f.path, "rb")  # noqa: SIM115 - closed by the reader that wraps it
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))
    return open(f.path, "rb")


def line_blocks(f: InputFile, piece: Piece) -> Iterator[bytes]:
    """The piece's bytes in blocks that end at a newline, except the last.

    A line longer than a few blocks of a file that is one document (text) is cut at a
    UTF-8 character boundary (the one place where piecewise encoding may differ from
    whole-text encoding); a line of a format of records (JSON Lines) is never cut.
    """
    cut_long_lines = FORMATS[f.kind].whole_file_document
    with _open(f) as stream:
        remaining = -1
        if f.compression == "none":
            stream.seek(piece.start)
            remaining = piece.stop - piece.start
        carry = b""
        while remaining != 0:
            want = BLOCK_BYTES if remaining < 0 else min(BLOCK_BYTES, remaining)
            try:
                block = stream.read(want)
            except (OSError, EOFError, ValueError) as e:  # gzip/zstd report corruption so
                raise ModtrainError(f"cannot read {f.path}: {e}; the file is damaged") from None
            if not block:
                break
            if remaining > 0:
                remaining -= len(block)
            block = carry + block
            cut = block.rfind(b"\n") + 1
            if cut == 0 and (not cut_long_lines or len(block) < 4 * BLOCK_BYTES):
                carry = block  # no newline yet: read on, up to a bound
                continue
            if cut == 0:
                cut = _utf8_boundary(block)
            carry = block[cut:]
            yield block[:cut]
        if carry:
            yield carry


def _utf8_boundary(block: bytes) -> int:
    """A cut position that does not split a UTF-8 character (for lines beyond any block)."""
    cut = len(block)
    while cut > 0 and (block[cut - 1] & 0xC0) == 0x80:
        cut -= 1
    return cut - 1 if cut > 0 and block[cut - 1] >= 0xC0 else cut


def decode_utf8(data: bytes, f: InputFile) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ModtrainError(
            f"{f.path} is not UTF-8 text (byte {e.start} of a block: {e.reason}); "
            "convert it to UTF-8 first"
        ) from None


def jsonl_texts(block: bytes, f: InputFile, field: str, offset: int,
                where: Filter | None = None) -> Iterator[str]:
    """The `field` strings of the JSON lines in `block`, which starts at byte `offset`,
    of the records that `where` keeps."""
    text = decode_utf8(block, f)
    for n, line in enumerate(text.split("\n")):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise _bad_line(f, offset, block, n, f"is not valid JSON ({e.msg}); "
                            "fix or remove that line") from None
        if not isinstance(record, dict) or field not in record:
            raise _bad_line(f, offset, block, n, f"has no {field!r} field; pass --jsonl-field "
                            "NAME with the field that holds the text")
        value = record[field]
        if not isinstance(value, str):
            raise _bad_line(f, offset, block, n, f"holds {type(value).__name__} in field "
                            f"{field!r}, not a string")
        if where is None or where.keep([record.get(where.column)])[0]:
            yield value


def _bad_line(f: InputFile, offset: int, block: bytes, n: int, problem: str) -> ModtrainError:
    at = offset + sum(len(line) + 1 for line in block.split(b"\n")[:n])  # only on errors
    return ModtrainError(f"the line at byte {at} of {f.path} {problem}")


def to_json(files: list[InputFile], slices: list[list[Piece]]) -> dict:
    return {
        "files": [asdict(f) for f in files],
        "slices": [[[p.file, p.start, p.stop] for p in s] for s in slices],
    }


def from_json(data: dict) -> tuple[list[InputFile], list[list[Piece]]]:
    files = [InputFile(**f) for f in data["files"]]
    slices = [[Piece(*p) for p in s] for s in data["slices"]]
    return files, slices


# The columnar formats (Parquet, Arrow IPC) register after the line-based ones: every
# format is in FORMATS once this module is imported.
from modtrain.data.write import columnar  # noqa: E402, F401
