"""exsa-doctor: finds out why a local LLM inference server failed to start or to serve."""

__version__ = "0.1.0"
