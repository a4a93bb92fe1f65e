"""Conversion of training checkpoints to exports, and sampling from them."""
