"""One tiny real MoD run (trained through the CLI) and its export, for the report tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.inference.conftest import train_run


@pytest.fixture(scope="session")
def report_run(tmp_path_factory, char_store, char_tokenizer) -> Path:
    return train_run(tmp_path_factory.mktemp("runs") / "mod", char_store, char_tokenizer,
                     "train.zero_stage=1")


@pytest.fixture(scope="session")
def report_export(tmp_path_factory, report_run) -> Path:
    from modtrain.inference.export import convert_checkpoint

    return convert_checkpoint(report_run, tmp_path_factory.mktemp("exports") / "mod")
