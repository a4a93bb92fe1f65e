"""Training: DeepSpeed engine, optimizer and schedule, metrics, checkpoints."""
