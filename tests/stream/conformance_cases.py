"""Cases and value encoding shared by the conformance test and tests/stream/official_dump.py.

Imported both in .venv (our loader) and in .venv-official (the official bioscan-dataset package),
so it needs nothing but numpy and Pillow.
"""

import hashlib
import math

import numpy as np

LABELS = ["phylum", "class", "order", "family", "subfamily", "genus", "species", "dna_bin"]
SPLITS = ["pretrain", "train", "val", "test", "key_unseen", "val_unseen", "test_unseen", "other_heldout",
          "all", "seen", "unseen", "pretrain+train", "validation"]
COLUMNS = ["processid", "dna", "coord-lat", "coord-lon", "country", "province_state", "image_measurement_value",
           "area_fraction", "scale_factor", "chunk", "split", "image_path", "species_index", "dna_bin_index"]
RANKS = ["class", "order", "family", "subfamily", "genus", "species"]
#: The dataset's RGB statistics (bioscan_dataset.bioscan5m.RGB_MEAN / RGB_STDEV).
RGB_MEAN = (0.76281859, 0.76503749, 0.76373138)
RGB_STDEV = (0.14205404, 0.15642502, 0.17309470)
#: Splits whose metadata DataFrame the conformance test compares.
METADATA_CASES = ["split=train", "split=seen", "reduce=True-max=660-all", "reduce=True-max=40-train"]


# The transforms of the official README's "Data transforms" section, without torchvision (which
# .venv lacks): a centre crop to a normalised float tensor, a character-level DNA tokenizer, and
# the taxonomic text of several ranks.
def image_transform(image):
    import torch

    w, h = image.size
    crop = image.convert("RGB").crop(((w - 32) // 2, (h - 32) // 2, (w - 32) // 2 + 32, (h - 32) // 2 + 32))
    x = torch.from_numpy(np.asarray(crop).copy()).permute(2, 0, 1).float() / 255
    return (x - torch.tensor(RGB_MEAN).view(3, 1, 1)) / torch.tensor(RGB_STDEV).view(3, 1, 1)


def dna_transform(seq):
    import torch

    charmap = {"P": 0, "A": 1, "C": 2, "G": 3, "T": 4, "N": 5}
    return torch.tensor([charmap.get(c, 5) for c in seq] + [0] * (660 - len(seq)), dtype=torch.long)


def taxonomic_transform(labels):
    labels = [f"{k.title()}: {v}" for k, v in zip(RANKS, labels) if v and v == v]
    return ", ".join(labels)


def cases():
    out = {}
    for split in SPLITS:  # every split and metasplit: images, DNA, every index target, tuples
        out[f"split={split}"] = dict(split=split, modality=["processid", "image", "dna"], target_type=LABELS)
    out["text-dict"] = dict(split="all", modality=COLUMNS, target_type=LABELS, target_format="text",
                            output_format="dict")
    out["index-dict"] = dict(split="all", modality=["processid", "image", "dna"], target_type=["order", "uri"],
                             output_format="dict")
    for target in LABELS + ["uri"]:  # each target alone, both formats
        for fmt in ("index", "text"):
            out[f"target={target}-{fmt}"] = dict(split="all", modality=["processid"], target_type=target,
                                                 target_format=fmt)
    out["no-target"] = dict(split="train", modality=["processid", "dna"], target_type=[])
    # The idioms of the official README (bioscan_dataset-1.3.0.dist-info/METADATA), in its order.
    out["readme-default"] = dict(modality=["image", "dna"])
    out["readme-val"] = dict(split="val")
    out["readme-pretrain+train"] = dict(split="pretrain+train")
    out["readme-image"] = dict(modality="image")
    out["readme-dna"] = dict(modality="dna")
    out["readme-coords"] = dict(modality=("coord-lat", "coord-lon"))
    out["readme-size"] = dict(modality=("dna", "image_measurement_value"))
    out["readme-genus"] = dict(target_type="genus")
    out["readme-ranks"] = dict(target_type=["genus", "species", "dna_bin"])
    out["readme-index"] = dict(target_type="species", target_format="index")
    out["readme-text"] = dict(target_type="species", target_format="text")
    out["readme-dict"] = dict(output_format="dict")
    out["readme-transforms"] = dict(split="train", transform=image_transform, dna_transform=dna_transform)
    out["readme-taxonomic"] = dict(split="train", target_type=RANKS, target_format="text",
                                   target_transform=taxonomic_transform)
    for reduce in (False, True):
        for max_nt in (660, None, 40):
            for split in ("all", "train"):
                out[f"reduce={reduce}-max={max_nt}-{split}"] = dict(
                    split=split, modality=["processid", "dna"], target_type="genus", reduce_repeated_barcodes=reduce,
                    max_nucleotides=max_nt, output_format="dict")
    return out


def encode(value):
    """A JSON-able, comparable form of one output value, with its type: the official loader's
    ``np.int16`` index is not a Python ``int``, its ``np.float64`` not a ``float``."""
    if value is None or isinstance(value, (str, dict, tuple, list)) or hasattr(value, "size") and hasattr(
            value, "convert") or getattr(value, "ndim", 0) > 0:
        return plain(value)
    return [type(value).__name__, plain(value)]


def plain(value):
    """A JSON-able, comparable form of one output value (see :func:`encode`)."""
    if hasattr(value, "convert") and hasattr(value, "size"):  # PIL image: its pixels
        return ["image", type(value).__name__, list(value.size),
                hashlib.sha256(np.asarray(value.convert("RGB")).tobytes()).hexdigest()]
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [type(value).__name__, [encode(v) for v in value]]
    if hasattr(value, "numpy") and getattr(value, "ndim", 0) > 0:  # a tensor: dtype, shape and rounded values
        arr = np.round(value.numpy().astype(np.float64), 4)
        return ["tensor", str(value.dtype), list(arr.shape), hashlib.sha256(arr.tobytes()).hexdigest()]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if type(value).__name__ in ("NAType", "NaTType"):
        return "NaN"
    return value


def key_of(sample, kwargs, position=None):
    """The processid of an output sample (tuple or dict); a case without the processid modality is
    keyed by the sample's position."""
    modality = kwargs.get("modality", ("image", "dna"))
    modality = [modality] if isinstance(modality, str) else list(modality)
    if "processid" not in modality:
        return str(position)
    if isinstance(sample, dict):
        return sample["processid"]
    return sample[modality.index("processid")]
