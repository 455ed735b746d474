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
    for reduce in (False, True):
        for max_nt in (660, None, 40):
            for split in ("all", "train"):
                out[f"reduce={reduce}-max={max_nt}-{split}"] = dict(
                    split=split, modality=["processid", "dna"], target_type="genus", reduce_repeated_barcodes=reduce,
                    max_nucleotides=max_nt, output_format="dict")
    return out


def encode(value):
    """A JSON-able, comparable form of one output value."""
    if hasattr(value, "convert") and hasattr(value, "size"):  # PIL image: its pixels
        return ["image", list(value.size), hashlib.sha256(np.asarray(value.convert("RGB")).tobytes()).hexdigest()]
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [encode(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if type(value).__name__ in ("NAType", "NaTType"):
        return "NaN"
    return value


def key_of(sample, kwargs):
    """The processid of an output sample (tuple or dict)."""
    if isinstance(sample, dict):
        return sample["processid"]
    return sample[list(kwargs["modality"]).index("processid")]
