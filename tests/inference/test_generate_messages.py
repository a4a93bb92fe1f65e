"""What `modtrain generate` tells a user: a truncated prompt, unknown characters, escapes in
--stop, a routing choice a dense export cannot use, and the sliding window in --help."""

from __future__ import annotations

import pytest

from modtrain.cli import build_parser, main
from modtrain.data.tokenizer import Tokenizer
from modtrain.errors import ModtrainError
from modtrain.inference.commands import unescape
from modtrain.inference.generate import generate_text
from modtrain.inference.sampling import Sampling
from tests.inference.conftest import SEQ

GREEDY = Sampling(temperature=0.0)


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("modtrain: warning: ")]


def test_long_prompt_says_how_much_it_kept(mod_export, capsys):
    tokenizer = Tokenizer(mod_export / "tokenizer.model")
    short, long = "ROMEO:", "ROMEO: a word, and then another word, and a third one.\n"
    n = len(tokenizer.encode(long))
    assert n > SEQ
    texts, _ = generate_text(mod_export, short, 2, sampling=GREEDY)
    assert _warnings(capsys.readouterr().err) == []
    texts, _ = generate_text(mod_export, long, 2, sampling=GREEDY)
    assert texts[0].startswith(long)
    (line,) = _warnings(capsys.readouterr().err)
    assert f"kept its last {SEQ // 2} of {n} tokens" in line
    assert f"{SEQ}-token window" in line


def test_generate_help_explains_the_sliding_window(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Sliding context window" in text and "last half window" in text
    assert "Python escapes are decoded" in text


def test_unknown_characters_are_named_once(mod_export, capsys):
    texts, _ = generate_text(mod_export, "ROMEO: é€é\t中 é", 2, sampling=GREEDY)
    (line,) = _warnings(capsys.readouterr().err)
    assert "'é', '€', '\\t', '中'" in line and "not in the tokenizer's vocabulary" in line


@pytest.mark.parametrize("typed,meant", [
    ("\\n\\n", "\n\n"), ("a\\tb", "a\tb"), ("\\\\n", "\\n"), ("é€\\n", "é€\n"),
    ("\\é", "\\é"), ("\\x41\\u00e9\\U0001F600\\N{BULLET}", "Aé😀•"), ("end\\", "end\\"),
    ("\\q", "\\q"), ("\\101", "A"), ("\\'\\\"", "'\""), ("plain", "plain"),
])
def test_stop_escapes_decode_like_python_strings(typed, meant):
    assert unescape(typed, "--stop") == meant


def test_bad_stop_escape_is_one_clear_error():
    with pytest.raises(ModtrainError, match=r"\\N\{NO SUCH\} is not a valid escape"):
        unescape("\\N{NO SUCH}", "--stop")


def test_stop_typed_with_escapes_ends_the_sample(mod_export, capsys):
    args = ["generate", str(mod_export), "--prompt", "ROMEO:", "--max-new-tokens", "40",
            "--temperature", "0"]
    assert main(args) == 0
    full = capsys.readouterr().out[:-1]  # print's newline
    generated = full[len("ROMEO:"):]
    stop = generated[len(generated) // 2]
    typed = "\\n" if stop == "\n" else f"\\x{ord(stop):02x}"
    assert main([*args, "--stop", typed]) == 0
    assert capsys.readouterr().out[:-1] == "ROMEO:" + generated[: generated.index(stop)]


@pytest.mark.parametrize("routing", ["router", "predictor"])
def test_routing_on_a_dense_export_is_refused(dense_export, capsys, routing):
    assert main(["generate", str(dense_export), "--routing", routing]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"modtrain: error: --routing {routing} does not apply")
    assert "dense export (no routed layers); drop --routing" in line
