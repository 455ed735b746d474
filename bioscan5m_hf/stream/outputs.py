"""The official loader's API layer, shared by the map-style and the streaming ``BIOSCAN5M``: what
one raw record (metadata values and JPEG bytes) becomes (modalities, index or text targets, tuple
or dict, the three transforms), and the label look-ups (``index2label``, ``label2index``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from .. import schema
from ..errors import ShardError
from ..repo.readers import open_image
from ..transforms import check_image_size

#: Errors of a damaged image (the record's bytes are there but do not decode).
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class DamagedImage(ShardError):
    """An image that does not decode, naming its shard and member. Raised only where our own code
    decodes, never around a user's function, so ``on_error="skip"`` skips damaged data and nothing
    else: a user's transform that raises (even a ``ShardError``) reaches them unchanged."""

    def __init__(self, shard: str, processid: str, cause: BaseException):
        self.shard, self.member, self.cause = shard, f"{processid}.{schema.IMAGE_EXTENSION}", cause
        super().__init__(f"{shard}: member {self.member}: image does not decode ({cause})")


def image_error(shard: str, processid: str, error: BaseException) -> DamagedImage:
    """The error of an image that does not decode, naming its shard and member."""
    return DamagedImage(shard, processid, error)


def decoded_image(record: dict) -> Image.Image:
    """The record's PIL image, decoded now (``record["__shard__"]`` names its shard), so that a
    damaged image fails here and not inside a user's transform."""
    try:
        image = open_image(record["image"])
        check_image_size(image)
        image.load()
    except IMAGE_ERRORS as e:
        raise image_error(record["__shard__"], record["processid"], e) from None
    return image


def missing_as_nan(value):
    return math.nan if value is None else value


def code_dtype(categories: int) -> np.dtype:
    """The dtype of the codes of a pandas categorical of ``categories`` categories: what the official
    loader's ``<rank>_index`` values are (``np.int8`` below 127 labels, ``np.int16`` below 32,767, ...).

    >>> code_dtype(120), code_dtype(20_000), code_dtype(400_000)
    (dtype('int8'), dtype('int16'), dtype('int32'))
    """
    for dtype in (np.int8, np.int16, np.int32):
        if categories < np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


#: Metadata columns the official loader reads as float64 (its other columns are strings or categories).
FLOAT_COLUMNS = frozenset(c.name for c in schema.COLUMNS if pa.types.is_floating(c.type))


def official_value(column: str, value):
    """A metadata value as the official loader's ``metadata.iloc[i]`` gives it: float columns as
    ``np.float64`` (NaN where missing), the others as ``str``, or ``float('nan')`` where missing."""
    if column in FLOAT_COLUMNS:
        return np.float64(math.nan if value is None else value)
    return missing_as_nan(value)


class Labels:
    """Label <-> index over the whole release: an index is the label's position among the sorted
    distinct labels of its column (the official category code). A record's label that is missing,
    or not in the vocabulary (a vocabulary a user gave that leaves labels out), is ``-1``, the same
    in every path (:meth:`index` for one record, :meth:`indices` for a column). Only the official
    look-up :meth:`label2index` refuses an unknown label, as the official loader does.

    >>> labels = Labels({"species": ["a", "b"]})
    >>> labels.index("species", "b"), labels.index("species", None), labels.index("species", "z")
    (1, -1, -1)
    >>> labels.indices("species", pa.chunked_array([["b", None, "a", "z"]])).tolist()
    [1, -1, 0, -1]
    """

    def __init__(self, vocabularies: dict[str, list[str]]):
        self.vocabularies = vocabularies
        self._index: dict[str, dict[str, int]] = {}
        self._dtype: dict[str, type] = {}

    def lookup(self, column: str) -> dict[str, int]:
        """``{label: index}`` of a column (plain dicts: building Arrow arrays from Python lists would
        import pandas, a sixth of a second before a loader's first batch)."""
        table = self._index.get(column)
        if table is None:
            table = self._index[column] = {v: i for i, v in enumerate(self.vocabularies[column])}
        return table

    def index(self, column: str, label: str | None) -> int:
        return -1 if label is None else self.lookup(column).get(label, -1)

    def official_index(self, column: str, label: str | None) -> np.integer:
        """:meth:`index` with the official loader's type: the numpy integer of the column's
        categorical codes (:func:`code_dtype`), so a batch of them has the official dtype."""
        dtype = self._dtype.get(column)
        if dtype is None:
            dtype = self._dtype[column] = code_dtype(len(self.vocabularies[column])).type
        return dtype(self.index(column, label))

    def indices(self, column: str, values: pa.ChunkedArray | pa.Array) -> np.ndarray:
        """int64 indices of a label column, each distinct label looked up once (the column
        dictionary-encoded by Arrow). Read from the buffers: Arrow's own conversions of nulls
        import pandas, a third of a second in each fresh worker before its first batch."""
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        encoded = pc.dictionary_encode(values)
        index = self.lookup(column)
        lookup = np.array([index.get(label, -1) for label in encoded.dictionary.to_pylist()] + [-1], dtype=np.int64)
        codes, n = encoded.indices, len(encoded.indices)
        found = np.frombuffer(codes.buffers()[1], dtype=np.dtype(codes.type.to_pandas_dtype()))[
            codes.offset: codes.offset + n]
        if codes.null_count:  # a null's slot holds no code: point it at the -1 at the end of `lookup`
            bits = np.unpackbits(np.frombuffer(codes.buffers()[0], np.uint8), bitorder="little")
            found = np.where(bits[codes.offset: codes.offset + n].astype(bool), found, len(lookup) - 1)
        return lookup[found]

    def index2label(self, index, column: str):
        labels = self.vocabularies[column]
        if not hasattr(index, "__len__"):
            return "" if index < 0 else labels[index]
        return np.array(["" if i < 0 else labels[i] for i in np.asarray(index).tolist()], dtype=object)

    def label2index(self, label, column: str):
        single = isinstance(label, str)
        out = []
        for lab in [label] if single else label:
            if lab != "" and lab not in self.lookup(column):
                raise KeyError(f"Label {lab!r} not found in metadata column {column!r}")
            out.append(-1 if lab == "" else self.lookup(column)[lab])
        return out[0] if single else np.asarray(out)


class OfficialOutputs:
    """A raw record -> the official ``BIOSCAN5M`` sample, for the given constructor arguments."""

    def __init__(self, modality: str | Iterable[str], target_type: str | Iterable[str], target_format: str,
                 output_format: str, transform: Callable | None, dna_transform: Callable | None,
                 target_transform: Callable | None, max_nucleotides: int | None):
        self.modality = [modality] if isinstance(modality, str) else list(modality)
        self.modalities = [schema.resolve_modality(m) for m in self.modality]
        self.target_type = schema.resolve_targets(target_type)
        if target_format not in ("index", "text"):
            raise ValueError(f"Unknown target_format: {target_format!r}")
        self.target_format = target_format
        self.output_format = "dict" if output_format == "dictionary" else output_format
        if self.output_format not in ("tuple", "dict"):
            raise ValueError(f"Unknown output_format: {output_format!r}")
        if not self.target_type and target_transform is not None:
            raise RuntimeError("target_transform is specified but target_type is empty")
        self.transform, self.dna_transform, self.target_transform = transform, dna_transform, target_transform
        self.max_nucleotides = max_nucleotides
        self.labels: Labels | None = None  # set by the dataset once the repo's vocabularies are known
        self.mark_padding = False  # dict outputs say "padding" (set by the distributed streaming dataset)

    @property
    def columns(self) -> set[str]:
        """The metadata columns a record must carry."""
        return {"processid", *(c for m in self.modalities for c in m.columns), *self.target_type}

    @property
    def image(self) -> bool:
        return any(m.kind == "image" for m in self.modalities)

    def dna(self, record: dict) -> str:
        dna = record["dna_barcode"]
        return dna if self.max_nucleotides is None else dna[: self.max_nucleotides]

    def __call__(self, record: dict) -> Any:
        index = self.labels.official_index
        values = []
        for m in self.modalities:
            if m.kind == "image":
                x = decoded_image(record)
                if self.transform is not None:
                    x = self.transform(x)
            elif m.kind == "dna":
                x = self.dna(record)
                if self.dna_transform is not None:
                    x = self.dna_transform(x)
            elif m.kind == "image_path":
                chunk = record["chunk"]
                x = "/".join([record["split"], *([chunk] if chunk else []), f"{record['processid']}.jpg"])
            elif m.kind == "label_index":
                x = index(m.columns[0], record[m.columns[0]])
            else:
                x = official_value(m.name, record[m.name])
            values.append((m.name, x))
        target = []
        for t in self.target_type:
            label = record[t]
            target.append(index(t, label) if self.target_format == "index" else missing_as_nan(label))
            if self.output_format == "dict":
                values.append((t, missing_as_nan(label)))
                values.append((f"{t}_index", index(t, label)))
        if target:
            target = tuple(target) if len(target) > 1 else target[0]
            if self.target_transform is not None:
                target = self.target_transform(target)
        else:
            target = None
        values.append(("target", target))
        if self.output_format == "tuple":
            return tuple(v for _, v in values)
        if self.mark_padding:  # distributed: does this sample only repeat another to even out the ranks?
            values.append(("padding", record.get("__padding__", False)))
        return dict(values)

    def column(self, column: str | None) -> str:
        """The label column a look-up means: the one named, or the single target type."""
        if column is not None:
            return schema.TARGET_ALIASES.get(column, column)
        if len(self.target_type) == 1:
            return self.target_type[0]
        raise ValueError("column must be specified if there isn't a single target_type")


class OfficialAPI:
    """What both ``BIOSCAN5M`` classes expose of the official one besides samples: the constructor's
    arguments as attributes and the label look-ups. A class using it calls :meth:`configure`."""

    outputs: OfficialOutputs

    def configure(self, root, split: str, modality, image_package: str, reduce_repeated_barcodes: bool,
                  max_nucleotides: int | None, target_type, target_format: str, output_format: str,
                  transform, dna_transform, target_transform) -> None:
        """Check and keep the official constructor's arguments (the repo's labels come later)."""
        self.root = root
        self.split = schema.SPLIT_ALIASES.get(split, split)
        self.outputs = OfficialOutputs(modality, target_type, target_format, output_format, transform,
                                       dna_transform, target_transform, max_nucleotides)
        self.image_package = image_package
        self.reduce_repeated_barcodes = reduce_repeated_barcodes
        self.max_nucleotides = max_nucleotides

    @property
    def transform(self):
        return self.outputs.transform

    @property
    def modality(self) -> list[str]:
        return self.outputs.modality

    @property
    def target_type(self) -> list[str]:
        return self.outputs.target_type

    @property
    def target_format(self) -> str:
        return self.outputs.target_format

    @property
    def output_format(self) -> str:
        return self.outputs.output_format

    @property
    def vocabularies(self) -> dict[str, list[str]]:
        return self.outputs.labels.vocabularies

    def index2label(self, index, column: str | None = None):
        """Text label(s) of target index(es); negative indices (missing) map to ``""``."""
        return self.outputs.labels.index2label(index, self.outputs.column(column))

    def label2index(self, label, column: str | None = None):
        """Index(es) of text label(s); ``""`` (missing) maps to ``-1``."""
        return self.outputs.labels.label2index(label, self.outputs.column(column))
