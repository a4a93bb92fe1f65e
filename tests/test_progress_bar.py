"""Progress bars: drawn with rate and time left on a terminal, silent in batch logs."""

from __future__ import annotations

import sys

import modtrain.progress_bar as progress_bar
from modtrain.data.write.progress import Display


def test_bar_draws_on_a_terminal_only(capsys, monkeypatch):
    assert list(progress_bar.bar(range(3), desc="eval")) == [0, 1, 2]
    assert capsys.readouterr().err == ""  # pytest's stderr is not a terminal
    monkeypatch.setattr(progress_bar, "on_terminal", lambda: True)
    assert list(progress_bar.bar(range(3), desc="eval")) == [0, 1, 2]
    err = capsys.readouterr().err
    assert "eval" in err and "/3 [" in err and "it/s" in err
    assert list(progress_bar.bar(range(3), desc="eval", enabled=False)) == [0, 1, 2]
    assert capsys.readouterr().err == ""


def test_prepare_display_is_a_bar_with_rates_on_a_terminal(capsys, monkeypatch):
    monkeypatch.setattr(progress_bar, "on_terminal", lambda: True)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    display = Display(num_slices=4, kept=1)
    display.show((2_000_000, 500_000, 2), force=True)
    display.close((4_000_000, 1_000_000, 3))
    err = capsys.readouterr().err
    assert "prepare" in err and "slice" in err and "MB/s" in err
    assert err.rstrip().splitlines()[-1].startswith("prepare: 4/4 slices (1 kept) | 4.0 MB text")


def test_prepare_display_in_a_batch_log_is_plain_lines(capsys):
    display = Display(num_slices=2)
    display.close((1_000_000, 250_000, 2))
    assert capsys.readouterr().err.startswith("prepare: 2/2 slices | 1.0 MB text | 250,000 tokens")
