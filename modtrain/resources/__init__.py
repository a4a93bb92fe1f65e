"""Embedded data: tinyshakespeare (public domain, 1,115,394 characters) for the default run."""

from pathlib import Path

TINYSHAKESPEARE = Path(__file__).with_name("tinyshakespeare.txt")
