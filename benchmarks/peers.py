"""The loaders a user could pick instead of ``make_loader``, fed the same records the same way, for
``python -m benchmarks --only peers``.

Every loader reads the ``pretrain`` split of one converted sample, decodes each image with the same
function (:func:`~bioscan5m_hf.transforms.decode_image`: simplejpeg when installed, shorter side to
256, centre crop), tokenises the barcode with the same tokenizer and collates the same batch
(channels-last uint8 images written into shared memory, k-mer ids, species indices), with batch
size 256 and 2 workers. Each runs in its own process (``python -m benchmarks.peers NAME
DATA``, in the environment ``scripts/install_peers.sh`` prepares, where every one of them imports),
checks that it delivered every record exactly once, and prints ``{"samples", "seconds",
"first_batch"}`` as JSON.

- ``make_loader``: this project as it comes, its defaults (``decode="auto"``);
- ``dataloader-in-memory``: a plain ``torch`` DataLoader over JPEG bytes already in memory;
- ``webdataset``: the ``webdataset`` library over the converted tars;
- ``datasets``: ``datasets`` streaming of the converted Parquet files, a batch of rows at a time
  (``IterableDataset.batch``) as the repo card shows, collated as every peer is;
- ``litdata``: LitData's ``optimize`` output read by its ``StreamingDataLoader`` (made by :func:`prepare`);
- ``mosaic``: MosaicML Streaming's MDS shards read by its ``StreamingDataset`` (made by :func:`prepare`);
- the ``-dna`` variants: the same loaders, DNA-only (token ids + species, batch 1024), on a metadata-only
  conversion of realistic size (``datasets`` reads its ``metadata`` config).

A loader whose library is missing there is reported as such, not measured.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

from bioscan5m_hf import schema

BATCH, WORKERS, SIZE = 256, 2, 256
DNA_BATCH = 1024
PEERS = ("make_loader", "dataloader-in-memory", "webdataset", "datasets", "litdata", "mosaic")
#: DNA-only (token ids + species, no image): the same loaders on a metadata-only conversion.
DNA_PEERS = ("make_loader-dna", "dataloader-in-memory-dna", "datasets-dna", "litdata-dna", "mosaic-dna")
OPTIONAL = {"litdata": "litdata", "mosaic": "streaming", "webdataset": "webdataset", "datasets": "datasets"}


def _species(out: Path) -> list[str]:
    """The converted repo's species vocabulary (a label's index is its place in it)."""
    manifest = json.loads((out / schema.PARQUET_REPO / schema.MANIFEST).read_text())
    return manifest["vocabularies"]["species"]


def parquet_shards(out: Path, config: str = "cropped_256") -> list[Path]:
    manifest = json.loads((out / schema.PARQUET_REPO / schema.MANIFEST).read_text())
    return [out / schema.PARQUET_REPO / s["path"] for s in manifest["configs"][config]["pretrain"]["shards"]]


def tar_shards(out: Path) -> list[Path]:
    manifest = json.loads((out / schema.WDS_REPO / schema.MANIFEST).read_text())
    return [out / schema.WDS_REPO / s["path"] for s in manifest["configs"]["cropped_256"]["pretrain"]["shards"]]


def records(out: Path):
    """(processid, JPEG bytes, barcode, species) of every pretrain record, from the Parquet shards."""
    for path in parquet_shards(out):
        table = pq.read_table(path, columns=["image", "processid", "dna_barcode", "species"])
        images = table.column("image").combine_chunks().field("bytes").to_pylist()
        yield from zip(table.column("processid").to_pylist(), images, table.column("dna_barcode").to_pylist(),
                       table.column("species").to_pylist())


def dna_records(out: Path):
    """(processid, barcode, species) of every pretrain record, from the metadata config."""
    for path in parquet_shards(out, schema.METADATA_CONFIG):
        table = pq.read_table(path, columns=["processid", "dna_barcode", "species"])
        yield from zip(*(table.column(c).to_pylist() for c in ("processid", "dna_barcode", "species")))


class Collate:
    """Samples, tuples of ``columns`` ((processid, JPEG bytes, barcode, species label), or without the
    image for DNA-only) -> make_loader's batch, decoding here (in the worker that collates) by
    :class:`~bioscan5m_hf.stream.collate.BatchCollate`: make_loader's decode, tokenizer and label
    indices, each batch decoded straight into shared memory made fresh for it, as ``default_collate``
    makes it (``slots=0``: the peers as their users run them; the card's ``datasets`` route with
    BatchCollate's reused slots is the loader area's ``datasets`` row)."""

    COLUMNS = ("processid", "image", "dna_barcode", "species")
    DNA_COLUMNS = ("processid", "dna_barcode", "species")

    def __init__(self, species: list[str], columns: tuple[str, ...] = COLUMNS):
        from bioscan5m_hf.stream.collate import BatchCollate

        self.columns = columns
        self.collate = BatchCollate(SIZE, vocabularies={"species": species}, slots=0)

    def __call__(self, samples) -> dict:
        return self.collate({column: list(values) for column, values in zip(self.columns, zip(*samples))})


# --------------------------------------------------------------------------------------------------
# Preparing the peers' own formats


def prepare(out: Path, workdir: Path, dna_out: Path | None = None) -> dict[str, str]:
    """Convert the samples' pretrain records to LitData's and MosaicML Streaming's formats (where the
    library is installed and the output is not there yet): ``out``'s with images, ``dna_out``'s
    (a metadata-only conversion) without; what each loader reads."""
    data = {"out": str(out), **({"dna_out": str(dna_out)} if dna_out else {})}
    sources = [("", out, records)] + ([("-dna", dna_out, dna_records)] if dna_out else [])
    for suffix, source, read in sources:
        rows: list = []
        for name, module, folder, write in (("litdata", "litdata", "litdata", _write_litdata),
                                            ("mosaic", "streaming", "mds", _write_mds)):
            try:
                __import__(module)
            except ImportError:
                continue
            target = workdir / (folder + suffix)
            if not (target / "index.json").exists():
                rows = rows or list(read(source))
                write(rows, target)
            data[name + suffix] = str(target)
    return data


def _litdata_item(row):
    if len(row) == 3:  # DNA-only
        pid, dna, species = row
        return {"processid": pid, "dna": dna, "species": species or ""}
    pid, image, dna, species = row
    return {"processid": pid, "image": image, "dna": dna, "species": species or ""}


def _write_litdata(rows, target: Path) -> None:
    import litdata

    litdata.optimize(fn=_litdata_item, inputs=rows, output_dir=str(target), chunk_bytes="64MB", num_workers=1,
                     mode="overwrite")


def _write_mds(rows, target: Path) -> None:
    from streaming import MDSWriter

    dna_only = len(rows[0]) == 3
    columns = {"processid": "str", **({} if dna_only else {"image": "bytes"}), "dna": "str", "species": "str"}
    with MDSWriter(out=str(target), columns=columns, size_limit="64mb") as writer:
        for row in rows:
            writer.write(_litdata_item(row))


# --------------------------------------------------------------------------------------------------
# The loaders (each in its own process)


def _make_loader(data: dict):
    from bioscan5m_hf import StreamingBIOSCAN5M, make_loader

    return make_loader(StreamingBIOSCAN5M(data["out"], "pretrain"), batch_size=BATCH, num_workers=WORKERS,
                       image_size=SIZE, persistent_workers=False)


def _in_memory(data: dict):
    rows = list(records(Path(data["out"])))
    return torch.utils.data.DataLoader(rows, batch_size=BATCH, num_workers=WORKERS, collate_fn=Collate(
        _species(Path(data["out"]))), multiprocessing_context="fork")


def _webdataset(data: dict):
    import webdataset as wds

    urls = [str(p) for p in tar_shards(Path(data["out"]))]

    def row(sample):
        meta = json.loads(sample["json"])
        return meta["processid"], sample["jpg"], meta["dna_barcode"], meta["species"]

    pipeline = wds.WebDataset(urls, shardshuffle=False, workersplitter=wds.split_by_worker, empty_check=False)
    pipeline = pipeline.map(row).batched(BATCH, collation_fn=Collate(_species(Path(data["out"]))), partial=True)
    return wds.WebLoader(pipeline, batch_size=None, num_workers=WORKERS, multiprocessing_context="fork")


def _datasets(data: dict):
    """As the repo card shows, batches of rows (``IterableDataset.batch``), collated as every peer is."""
    import datasets

    files = [str(p) for p in parquet_shards(Path(data["out"]))]
    ds = datasets.load_dataset("parquet", data_files={"train": files}, split="train", streaming=True,
                               columns=["processid", "image", "dna_barcode", "species"])
    ds = ds.cast_column("image", datasets.Image(decode=False))
    return torch.utils.data.DataLoader(ds.batch(BATCH), batch_size=None, num_workers=WORKERS,
                                       collate_fn=Collate(_species(Path(data["out"]))).collate,
                                       multiprocessing_context="fork")


def _litdata(data: dict):
    import litdata

    class Rows(litdata.StreamingDataset):
        def __getitem__(self, index):
            item = super().__getitem__(index)
            return item["processid"], item["image"], item["dna"], item["species"] or None

    return litdata.StreamingDataLoader(Rows(data["litdata"]), batch_size=BATCH, num_workers=WORKERS,
                                       collate_fn=Collate(_species(Path(data["out"]))))


def _mosaic(data: dict):
    from streaming import StreamingDataset

    class Rows(StreamingDataset):
        def __getitem__(self, index):
            item = super().__getitem__(index)
            return item["processid"], item["image"], item["dna"], item["species"] or None

    ds = Rows(local=data["mosaic"], batch_size=BATCH, shuffle=False)
    return torch.utils.data.DataLoader(ds, batch_size=BATCH, num_workers=WORKERS, collate_fn=Collate(
        _species(Path(data["out"]))), multiprocessing_context="fork")


def _make_loader_dna(data: dict):
    from bioscan5m_hf import StreamingBIOSCAN5M, make_loader

    return make_loader(StreamingBIOSCAN5M(data["dna_out"], "pretrain", modality=("dna",)), batch_size=DNA_BATCH,
                       num_workers=WORKERS, persistent_workers=False)


def _in_memory_dna(data: dict):
    rows = list(dna_records(Path(data["dna_out"])))
    return torch.utils.data.DataLoader(rows, batch_size=DNA_BATCH, num_workers=WORKERS, collate_fn=Collate(
        _species(Path(data["dna_out"])), Collate.DNA_COLUMNS), multiprocessing_context="fork")


def _datasets_dna(data: dict):
    import datasets

    files = [str(p) for p in parquet_shards(Path(data["dna_out"]), schema.METADATA_CONFIG)]
    ds = datasets.load_dataset("parquet", data_files={"train": files}, split="train", streaming=True,
                               columns=["processid", "dna_barcode", "species"])
    return torch.utils.data.DataLoader(ds.batch(DNA_BATCH), batch_size=None, num_workers=WORKERS,
                                       multiprocessing_context="fork",
                                       collate_fn=Collate(_species(Path(data["dna_out"])), Collate.DNA_COLUMNS).collate)


def _stream_dna(data: dict, kind: str):
    if kind == "litdata":
        import litdata

        base, loader = litdata.StreamingDataset, litdata.StreamingDataLoader
    else:
        from streaming import StreamingDataset as base  # noqa: N813

        loader = torch.utils.data.DataLoader

    class Rows(base):
        def __getitem__(self, index):
            item = super().__getitem__(index)
            return item["processid"], item["dna"], item["species"] or None

    ds = Rows(data[f"{kind}-dna"]) if kind == "litdata" else Rows(local=data["mosaic-dna"], batch_size=DNA_BATCH,
                                                                   shuffle=False)
    return loader(ds, batch_size=DNA_BATCH, num_workers=WORKERS, collate_fn=Collate(_species(
        Path(data["dna_out"])), Collate.DNA_COLUMNS))


LOADERS = {"make_loader": _make_loader, "dataloader-in-memory": _in_memory, "webdataset": _webdataset,
           "datasets": _datasets, "litdata": _litdata, "mosaic": _mosaic, "make_loader-dna": _make_loader_dna,
    "dataloader-in-memory-dna": _in_memory_dna, "datasets-dna": _datasets_dna,
    "litdata-dna": lambda d: _stream_dna(d, "litdata"), "mosaic-dna": lambda d: _stream_dna(d, "mosaic")}


def run(name: str, data: dict) -> dict:
    """One pass of loader ``name``: samples, seconds (construction included), seconds to the first
    batch; an error if it did not deliver every pretrain record exactly once."""
    dna_only = name.endswith("-dna")
    shards = (parquet_shards(Path(data["dna_out"]), schema.METADATA_CONFIG) if dna_only
              else parquet_shards(Path(data["out"])))
    expected = sum(pq.ParquetFile(p).metadata.num_rows for p in shards)
    start = time.perf_counter()
    loader = LOADERS[name](data)
    first, seen = None, []
    for batch in loader:
        if first is None:
            first = time.perf_counter() - start
        assert dna_only or batch["image"].shape[1:] == (3, SIZE, SIZE)
        assert batch["dna"].shape[0] == len(batch["processid"]) == len(batch["species"])
        seen += batch["processid"]
    seconds = time.perf_counter() - start
    if len(seen) != expected or len(set(seen)) != expected:
        raise RuntimeError(f"{name}: delivered {len(seen)} samples, {len(set(seen))} distinct, of {expected}")
    return {"samples": len(seen), "seconds": seconds, "first_batch": first}


def available(name: str) -> bool:
    module = OPTIONAL.get(name)
    if module is None:
        return True
    try:
        __import__(module)
        return True
    except ImportError:
        return False


if __name__ == "__main__":
    if sys.argv[1] == "prepare":  # prepare OUT WORKDIR [DNA_OUT]: the peers' formats, which loaders can run here
        data = prepare(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]) if len(sys.argv) > 4 else None)
        names = [*PEERS, *(DNA_PEERS if "dna_out" in data else ())]
        data["available"] = [n for n in names if available(n.removesuffix("-dna"))
                             and (n.removesuffix("-dna") not in ("litdata", "mosaic") or n in data)]
        print(json.dumps(data))
    else:
        print(json.dumps(run(sys.argv[1], json.loads(sys.argv[2]))))
