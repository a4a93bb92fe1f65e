"""modtrain: distributed pretraining of Mixture-of-Depths language models."""

__version__ = "0.1.0"
