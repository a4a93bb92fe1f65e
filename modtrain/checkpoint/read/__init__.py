"""Checkpoints read without DeepSpeed: full fp32 weights from the files, loaded weights-only."""
