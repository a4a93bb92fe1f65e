"""Slurm: job scripts rendered from templates, `modtrain submit` and `modtrain status`."""
