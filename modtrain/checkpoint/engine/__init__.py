"""Checkpoints through the DeepSpeed engine: save, load, resume, universal copies."""
