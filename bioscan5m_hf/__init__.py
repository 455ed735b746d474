"""BIOSCAN-5M as a native Hugging Face dataset: convert, load and stream."""

__version__ = "0.1.0"
