"""Tokenizers, zarr token stores and the sequences training reads from them."""
