"""Build the second isoFLOP corpus from text already on the machine, with no network.

    python benchmarks/corpus_local.py [--out data/local_corpus] [--max-mb 32]

Documents, one per source file: the Python standard library's own sources (`*.py`, test
suites left out; English docstrings and comments mixed with code) and the Debian package
documentation in /usr/share/doc (copyright texts, READMEs, changelogs, gzip ones unpacked).
Files are read in sorted order, shuffled with a fixed seed (so the validation tail that
training holds out is a random sample, not the last packages alphabetically) and cut at
--max-mb. Writes OUT/corpus.jsonl (one {"text": ...} per document, for `modtrain data
prepare`), OUT/corpus.txt (the same text, for `modtrain tokenizer train`, which reads plain
text) and OUT/manifest.json (sources, sizes, sha256). The same machine image gives the same
bytes; another image gives a corpus of the same kind, not the same one (the manifest says
which).

Then the tokenizer and store (what benchmarks/isoflop.py reads):
    modtrain tokenizer train --input data/local_corpus/corpus.txt --out data/local_bpe4k \\
        --type bpe --vocab-size 4096
    modtrain data prepare --tokenizer data/local_bpe4k.model \\
        --input data/local_corpus/corpus.jsonl --out data/local_bpe4k.zarr
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import sysconfig
from pathlib import Path

DOC_ROOT = Path("/usr/share/doc")
MIN_CHARS = 200  # shorter files (stubs, empty __init__.py) add EOS tokens and little text


def stdlib_sources() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
    return sorted(p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts))


def package_docs() -> list[Path]:
    if not DOC_ROOT.is_dir():
        return []
    return sorted(p for p in DOC_ROOT.rglob("*") if p.is_file() and not p.is_symlink())


def read_text(path: Path) -> str | None:
    """The file as UTF-8 text (gzip unpacked), or None for binary or undecodable files."""
    try:
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
        if b"\0" in data[:4096]:
            return None
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile):
        return None


def build(out: Path, max_mb: float, seed: int = 0) -> dict:
    documents = []
    for group, files in (("python-stdlib", stdlib_sources()), ("usr-share-doc", package_docs())):
        for path in files:
            text = read_text(path)
            if text and len(text.strip()) >= MIN_CHARS:
                documents.append((group, str(path), text))
    # Every stdlib source first (the code-and-prose half), then package docs, in a seeded
    # random order, up to the cap; the kept documents are shuffled again for the val tail.
    rng = random.Random(seed)
    stdlib = [d for d in documents if d[0] == "python-stdlib"]
    docs = [d for d in documents if d[0] != "python-stdlib"]
    rng.shuffle(docs)
    budget, kept, size = int(max_mb * 2**20), [], 0
    for doc in stdlib + docs:
        if size + len(doc[2].encode()) > budget:
            continue
        kept.append(doc)
        size += len(doc[2].encode())
    rng.shuffle(kept)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "corpus.jsonl", "w") as jsonl, open(out / "corpus.txt", "w") as txt:
        for _, _, text in kept:
            jsonl.write(json.dumps({"text": text}) + "\n")
            txt.write(text if text.endswith("\n") else text + "\n")
    manifest = {
        "documents": len(kept), "bytes": size, "seed": seed, "max_mb": max_mb,
        "groups": {group: sum(1 for d in kept if d[0] == group)
                   for group in ("python-stdlib", "usr-share-doc")},
        "sha256_jsonl": hashlib.sha256((out / "corpus.jsonl").read_bytes()).hexdigest(),
        "files": [d[1] for d in kept],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/local_corpus", help="output folder")
    parser.add_argument("--max-mb", type=float, default=32.0, help="corpus size cap (MiB)")
    args = parser.parse_args()
    m = build(Path(args.out), args.max_mb)
    print(f"wrote {args.out}: {m['documents']:,} documents, {m['bytes'] / 2**20:.1f} MiB "
          f"({m['groups']}), sha256 {m['sha256_jsonl'][:16]}")


if __name__ == "__main__":
    main()
