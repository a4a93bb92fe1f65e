"""What training reads: the names of a blend's sources in metrics."""

from __future__ import annotations

from modtrain.data.read.loading import source_names


def test_source_names_are_store_names_made_unique():
    assert source_names(["a/web.zarr", "b/code.zarr"]) == ["web", "code"]
    assert source_names(["a/web.zarr", "b/web.zarr", "c/x"]) == ["web-0", "web-1", "x"]
