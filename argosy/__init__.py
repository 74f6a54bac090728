"""Argosy: open models and untrusted code on the cheapest suitable GPUs."""

__version__ = "0.1.0"
