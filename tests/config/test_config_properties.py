"""Property-based: whatever YAML text, keys, types and overrides the loader is given, it
returns a validated Config or raises a one-line ModtrainError, never another exception."""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modtrain.config import Config, load_config
from modtrain.config.load import _all_keys
from modtrain.errors import ModtrainError

KEYS = _all_keys(Config)
FAST = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["auto", "none", "1e-3", "bf16", "router", "predictor", "[1, 2]", ""]),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=8)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=16))


def _nest(flat: dict[str, object]) -> dict:
    """{'a.b': 1} -> {'a': {'b': 1}}; a key that collides with a value is left flat."""
    out: dict = {}
    for key, value in flat.items():
        node, parts = out, key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                break
            node = child
        else:
            node[parts[-1]] = value
    return out


def _outcome(path: Path | None, overrides: list[str] = ()) -> Config | None:
    try:
        config = load_config(path, overrides)
    except ModtrainError as e:
        message = str(e)
        assert message and "\n" not in message, repr(message)
        return None
    assert isinstance(config, Config)
    return config


def _load_text(text: str, overrides: list[str] = ()) -> Config | None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(text)
        return _outcome(path, overrides)


@FAST
@given(st.dictionaries(keys, values, max_size=8))
def test_random_keys_and_values(flat):
    _load_text(yaml.safe_dump(_nest(flat)))


@FAST
@given(st.text(max_size=200))
def test_random_yaml_text(text):
    _load_text(text)


@FAST
@given(st.lists(st.tuples(keys, st.text(max_size=12)), max_size=4))
def test_random_overrides(pairs):
    _outcome(None, [f"{k}={v}" for k, v in pairs])


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(KEYS), st.one_of(st.integers(-2, 3), st.integers(-2, 3), scalars))
def test_one_valid_key_any_value(key, value):
    """A type the key accepts is kept as given; anything else is refused in one line."""
    config = _outcome(None, [f"{key}={yaml.safe_dump(value).strip().removesuffix('...')}"])
    if config is not None and not isinstance(value, (dict, list)):
        got = config
        for part in key.split("."):
            got = getattr(got, part)
        assert not isinstance(got, dict)
