"""The tiny trained runs of the inference tests, for the reader's tests."""

from tests.inference.conftest import dense_run, hf_offline, mod_run  # noqa: F401 - fixtures
