"""BIOSCAN-5M as a native Hugging Face dataset: convert, load and stream."""

__version__ = "0.1.0"

__all__ = ["BIOSCAN5M", "make_loader", "KmerTokenizer", "normalize", "__version__"]


def __getattr__(name):
    # Lazy, so that the converter and CLI do not import torch.
    if name == "BIOSCAN5M":
        from .dataset import BIOSCAN5M

        return BIOSCAN5M
    if name == "make_loader":
        from .loader import make_loader

        return make_loader
    if name in ("KmerTokenizer", "normalize"):
        from . import transforms

        return getattr(transforms, name)
    raise AttributeError(f"module 'bioscan5m_hf' has no attribute {name!r}")
