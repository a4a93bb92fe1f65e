"""Checkpoints: their format, writing them through DeepSpeed, reading them without it."""
