"""Notes and warnings appear once per job (rank 0); errors on every rank that has one."""

from __future__ import annotations

import sys

import pytest

from modtrain import log


@pytest.mark.parametrize("variable", ["RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK"])
def test_only_the_first_rank_notes_and_warns(monkeypatch, capsys, variable):
    monkeypatch.delitem(sys.modules, "torch.distributed", raising=False)  # a test's group
    for name in ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, "1")
    log.note("a note")
    log.warning("a warning")
    log.warning("every rank's", every_rank=True)
    log.error("an error")
    assert capsys.readouterr().err == ("modtrain: warning: every rank's\n"
                                       "modtrain: error: an error\n")
    monkeypatch.setenv(variable, "0")
    log.warning("a warning")
    assert capsys.readouterr().err == "modtrain: warning: a warning\n"
