"""Shared fixtures: a one-process gloo group for megatron-core layers, tiny corpora."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from modtrain.resources import TINYSHAKESPEARE as SHAKESPEARE

# Test traffic stays on loopback; DeepSpeed would otherwise discover a routable address.
os.environ["MASTER_ADDR"] = "127.0.0.1"
os.environ.setdefault("DS_ACCELERATOR", "cpu")
# The venv's tools first, in this process and every launched one: its ninja (pulled in by
# DeepSpeed) and a system ninja read each other's build logs as stale, so DeepSpeed's CPU
# communication op would be rebuilt again and again (minutes each).
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])


# Under pytest-xdist (`-n 2 --dist loadgroup`, the README's test command) each folder here
# runs on one worker: its session fixtures (a Slurm cluster, trained runs and their exports)
# are built once rather than once per worker. The groups are handed out first, so that
# the other worker's many short tests fill in around them instead of one group running
# alone at the end.
_SHARED_FIXTURE_FOLDERS = ("slurm", "inference", "report")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests = Path(__file__).parent
    rank = {folder: i for i, folder in enumerate(_SHARED_FIXTURE_FOLDERS)}
    for item in items:
        folder = item.path.relative_to(tests).parts[0]
        if folder in rank:
            item.add_marker(pytest.mark.xdist_group(folder))
    if config.getoption("dist", "no") != "no" or hasattr(config, "workerinput"):
        items.sort(key=lambda item: rank.get(item.path.relative_to(tests).parts[0], len(rank)))


@pytest.fixture(scope="session")
def dist():
    """A world-size-1 process group with megatron-core's parallel state (TP=1, PP=1)."""
    from modtrain.parallel import init_distributed

    return init_distributed()


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """The first 100k characters of tinyshakespeare: enough for tiny runs."""
    path = tmp_path_factory.mktemp("corpus") / "shakespeare_head.txt"
    path.write_text(SHAKESPEARE.read_text()[:100_000])
    return path


@pytest.fixture(scope="session")
def char_tokenizer(tmp_path_factory, corpus) -> Path:
    from modtrain.data.tokenizer import train_tokenizer

    return train_tokenizer([corpus], tmp_path_factory.mktemp("tok") / "char", "char")


@pytest.fixture(scope="session")
def char_store(tmp_path_factory, char_tokenizer, corpus) -> Path:
    from modtrain.data.write.prepare import prepare_store

    return prepare_store(char_tokenizer, [corpus], tmp_path_factory.mktemp("store") / "s.zarr")


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(MASTER_ADDR="127.0.0.1", DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        env.pop(key, None)
    return env


PYTHON = sys.executable
