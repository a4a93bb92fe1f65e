"""Whether a checkpoint tag's files may be loaded: what they may unpickle, and checksums.

Training (resume, universal conversion) and inference (convert) read the same DeepSpeed
files. Both load them with torch.load(weights_only=True), which builds tensors and
containers but calls no other code, allowing only the few DeepSpeed objects its
checkpoints pickle (DEEPSPEED_GLOBALS). Every save records the size and sha256 of each file
of its tag in checksums.json, so a truncated or damaged file is found before a load
starts; tags saved before modtrain recorded checksums have none and load "not verified".
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from modtrain.checkpoint.format import DEEPSPEED_GLOBALS, MANIFEST, RECOVERY_SCRIPTS
from modtrain.errors import ModtrainError

_CHUNK = 1 << 22


def _refused(path: str | Path, names: Iterable[str]) -> ModtrainError:
    return ModtrainError(
        f"{path} holds a Python object that modtrain will not unpickle "
        f"({', '.join(names)[:200]}); modtrain loads only tensors, containers and DeepSpeed's "
        "own checkpoint metadata, and running this file could run any code: do not use this "
        "checkpoint, resume from or convert one saved by modtrain"
    )


def restricted_load(path: str | Path, allowed: Sequence[Any], loader: Any = None,
                    **kwargs: Any) -> Any:
    """torch.load(weights_only=True) with `allowed` globals; a one-line error otherwise.
    `loader`: torch's own load, where torch.load is swapped for a call of this function."""
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return (loader or torch.load)(path, weights_only=True, **kwargs)
    except pickle.UnpicklingError as e:
        try:  # every offending global, by its full name
            names = unsafe_globals(Path(path))
        except Exception:  # noqa: BLE001 - fall back to torch's message
            names = []
        detail = str(e).split("WeightsUnpickler error: ")[-1].split(" was not")[0]
        raise _refused(path, names or [detail.strip().removeprefix("Unsupported global: ")]
                       ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise ModtrainError(f"{path} cannot be read as a torch checkpoint "
                            f"({str(e).splitlines()[0][:200]}); is the checkpoint complete?"
                            ) from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tag_files(tag_dir: Path) -> list[str]:
    """Names of the files a manifest covers: all of the tag but the manifest and scripts."""
    return sorted(p.name for p in tag_dir.iterdir()
                  if p.is_file() and p.name != MANIFEST and p.name not in RECOVERY_SCRIPTS)


def share(names: Sequence[str], rank: int, world: int) -> list[str]:
    """This rank's part of `names`, so that the ranks of a job hash a tag together."""
    return list(names[rank::world])


def checksums(tag_dir: Path, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    return {n: {"bytes": (tag_dir / n).stat().st_size, "sha256": _sha256(tag_dir / n)}
            for n in names}


def write_manifest(tag_dir: Path, files: dict[str, dict[str, Any]]) -> None:
    """checksums.json (write + fsync + rename): the last file of a tag before it is complete."""
    tmp = tag_dir / (MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"algorithm": "sha256", "files": dict(sorted(files.items()))}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, tag_dir / MANIFEST)


def read_manifest(tag_dir: Path) -> dict[str, dict[str, Any]] | None:
    """The recorded checksums, or None for a tag saved before modtrain recorded them."""
    path = tag_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        files = json.loads(path.read_text())["files"]
        if not isinstance(files, dict):
            raise TypeError("'files' is not an object")
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{MANIFEST} is unreadable ({e})") from None
    return files


@dataclass(frozen=True)
class Problem:
    """What is wrong with one file of a tag: `damaged` (fall back to an older tag) or
    `unsafe` (it pickles objects outside the allow-list: refuse)."""
    kind: str
    text: str


def unsafe_globals(path: Path) -> list[str]:
    """Globals a torch file would unpickle beyond what weights_only and DEEPSPEED_GLOBALS allow
    (read from its pickle opcodes, nothing is run). Raises on a file torch cannot parse."""
    return [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path)
            if g not in DEEPSPEED_GLOBALS]


def _damage(path: Path, name: str, want: dict[str, Any] | None) -> str | None:
    """How the file `name` (at `path`) differs from its recorded size and sha256 (None: it
    matches)."""
    if want is None:
        return f"{name} is not in its {MANIFEST}"
    size = path.stat().st_size
    if size != want["bytes"]:
        return f"{name} has {size} bytes, {want['bytes']} were saved"
    if _sha256(path) != want["sha256"]:
        return f"{name} does not match its saved sha256"
    return None


def check_files(tag_dir: Path, names: Sequence[str],
                recorded: dict[str, dict[str, Any]] | None) -> list[Problem]:
    """Problems of `names` in `tag_dir`: every torch file's pickled globals against the
    allow-list (first: a file that pickles code is refused, damaged or not), then size and
    sha256 against `recorded` when the tag has checksums."""
    problems = []
    for name in names:
        path = tag_dir / name
        if not path.is_file():
            problems.append(Problem("damaged", f"{name} is missing"))
            continue
        unreadable = None
        if name.endswith(".pt"):
            try:
                bad = unsafe_globals(path)
            except Exception as e:  # noqa: BLE001 - any parse failure means unreadable
                bad, unreadable = [], f"{name} cannot be read ({str(e).splitlines()[0][:120]})"
            if bad:
                problems.append(Problem("unsafe", str(_refused(path, bad))))
                continue
        damage = _damage(path, name, recorded.get(name)) if recorded is not None else None
        if (found := damage or unreadable) is not None:
            problems.append(Problem("damaged", found))
    return problems


def expected_files(tag_dir: Path, recorded: dict[str, dict[str, Any]] | None) -> list[str]:
    """Every file to check: those recorded plus any other file now in the tag."""
    return sorted(set(recorded or ()) | set(tag_files(tag_dir)))


def check_tag(tag_dir: Path, rank: int = 0, world: int = 1) -> tuple[list[Problem], bool]:
    """(problems of this rank's share of the tag's files, whether it has checksums)."""
    try:
        recorded = read_manifest(tag_dir)
    except ValueError as e:
        return [Problem("damaged", str(e))], False
    names = share(expected_files(tag_dir, recorded), rank, world)
    return check_files(tag_dir, names, recorded), recorded is not None
