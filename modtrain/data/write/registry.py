"""The registry of input formats: InputReader, its pieces of files, and @register."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import ClassVar

from modtrain.data.write.filters import Filter

AUTO = "auto"  # --format auto: each file's format from its name


@dataclass(frozen=True)
class InputFile:
    path: str
    size: int
    mtime_ns: int
    kind: str  # the name of its format, a key of FORMATS
    compression: str  # "none" | "gzip" | "zstd"


@dataclass(frozen=True)
class Piece:
    """Bytes [start, stop) of input `file`; compressed files are always whole."""

    file: int
    start: int
    stop: int


class InputReader:
    """One input format: subclass, set the class attributes, define `texts`, add @register."""

    name: ClassVar[str]  # --format NAME; stored as InputFile.kind
    title: ClassVar[str]  # in help texts, e.g. "JSON Lines"
    documents: ClassVar[str]  # what a document is, for help texts: "one document per line"
    # Names (less .gz/.zst) this format claims under --format auto; the longest match wins
    # and "" matches every name; () claims none: the format is used only with --format NAME.
    suffixes: ClassVar[tuple[str, ...]] = ()
    # True: the whole file is one document and `texts` yields consecutive fragments of it
    # (an empty file is an error, an overlong line may be cut); False: each text is a
    # document (an empty one is skipped and counted) and a line is never cut.
    whole_file_document: ClassVar[bool] = False
    uses_field: ClassVar[bool] = False  # the text is the record field --jsonl-field

    def pieces(self, index: int, f: InputFile, slice_bytes: int) -> list[Piece]:
        """Input file `index` cut into pieces of about `slice_bytes`, encoded independently."""
        raise NotImplementedError

    def texts(self, f: InputFile, piece: Piece, field: str,
              where: Filter | None = None) -> Iterator[tuple[int, Iterable[str]]]:
        """For each block of the piece read in turn: (its size in bytes, its texts); for a
        format of records, only those that `where` keeps."""
        raise NotImplementedError


FORMATS: dict[str, InputReader] = {}  # name -> reader, in registration order


def register(cls: type[InputReader]) -> type[InputReader]:
    """Class decorator: make an input format known to `modtrain data prepare`."""
    if cls.name in FORMATS or cls.name == AUTO:
        raise ValueError(f"input format {cls.name!r} is already taken")
    FORMATS[cls.name] = cls()
    return cls
