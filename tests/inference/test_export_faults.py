"""Convert and generate refuse a tokenizer that does not fit the model; an export's files
follow the umask; a killed convert's temporary directory goes with the next convert."""

from __future__ import annotations

import os
import shutil
import stat

import pytest

from modtrain.errors import ModtrainError
from modtrain.inference.export import convert_checkpoint
from modtrain.inference.generate import generate_text


@pytest.fixture(scope="module")
def small_tokenizer(tmp_path_factory):
    """A character tokenizer over a few letters: fewer tokens than the trained model's."""
    from modtrain.data.tokenizer import Tokenizer, train_tokenizer

    root = tmp_path_factory.mktemp("small_tok")
    text = root / "abc.txt"
    text.write_text("abc cab bac\n" * 50)
    path = train_tokenizer([text], root / "abc", "char")
    assert Tokenizer(path).vocab_size < 60
    return path


def test_convert_refuses_a_tokenizer_of_another_vocabulary(tmp_path, mod_run, small_tokenizer):
    with pytest.raises(ModtrainError, match=r"has \d+ tokens but the model was trained on \d+; "
                                            "pass the tokenizer training used"):
        convert_checkpoint(mod_run, tmp_path / "e", tokenizer=small_tokenizer)
    assert not (tmp_path / "e").exists() and not list(tmp_path.iterdir())


def test_generate_refuses_an_export_whose_tokenizer_was_swapped(tmp_path, mod_export,
                                                                 small_tokenizer):
    export = tmp_path / "e"
    shutil.copytree(mod_export, export)
    shutil.copyfile(small_tokenizer, export / "tokenizer.model")
    with pytest.raises(ModtrainError, match="convert the checkpoint again with --tokenizer"):
        generate_text(export, "abc", 20, sampling=None)


def test_export_files_follow_the_umask(tmp_path, mod_run):
    old = os.umask(0o022)
    try:
        out = convert_checkpoint(mod_run, tmp_path / "e")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert set(modes.values()) == {0o644}, modes


def test_convert_removes_what_a_killed_convert_left(tmp_path, mod_run):
    dead = tmp_path / f".e.tmp-{2**22 + 12345}-0badf00d"  # a pid above Linux's pid_max
    older = tmp_path / ".e.tmp-1a2b3c4d"  # the name before the pid was part of it
    running = tmp_path / f".e.tmp-{os.getpid()}-feedbeef"  # a convert still writing
    other = tmp_path / ".f.tmp-1a2b3c4d"  # another destination's
    for d in (dead, older, running, other):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"partial")
    convert_checkpoint(mod_run, tmp_path / "e")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["e", running.name, other.name])
