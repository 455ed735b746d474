"""BIOSCAN-5M as a native Hugging Face dataset: convert, load and stream.

Stages, one subpackage each: ``convert`` (official release -> repos), ``repo`` (reading and
verifying a converted repo, local or remote), ``stream`` (records into PyTorch training), ``hub``
(publishing), and ``tools`` (sample generator, demo, training example). ``options`` holds the
option objects a dataset takes (:class:`Storage`, :class:`Composition`).
"""

__version__ = "0.1.0"

__all__ = ["BIOSCAN5M", "StreamingBIOSCAN5M", "Storage", "Composition", "make_loader", "BatchCollate",
           "KmerTokenizer", "normalize", "__version__"]


def __getattr__(name):
    # Lazy, so that the converter and CLI do not import torch.
    if name == "BIOSCAN5M":
        from .stream.dataset import BIOSCAN5M

        return BIOSCAN5M
    if name == "StreamingBIOSCAN5M":
        from .stream.streaming import StreamingBIOSCAN5M

        return StreamingBIOSCAN5M
    if name in ("Storage", "Composition"):
        from . import options

        return getattr(options, name)
    if name == "make_loader":
        from .stream.loader import make_loader

        return make_loader
    if name == "BatchCollate":
        from .stream.collate import BatchCollate

        return BatchCollate
    if name in ("KmerTokenizer", "normalize"):
        from . import transforms

        return getattr(transforms, name)
    raise AttributeError(f"module 'bioscan5m_hf' has no attribute {name!r}")
