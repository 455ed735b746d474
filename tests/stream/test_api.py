"""The public surface: what data (the datasets, with their Storage and Composition objects) apart from
how it is delivered (make_loader); a user's own exceptions reaching them unchanged; one rule for
labels; the earlier keyword spellings still working, with a warning."""

import inspect
import json
import shutil
import traceback
import warnings

import pytest
import torch

from bioscan5m_hf import BIOSCAN5M, BatchCollate, Composition, Storage, StreamingBIOSCAN5M, make_loader, schema
from bioscan5m_hf.stream.columnar import ColumnarBatches
from bioscan5m_hf.stream.loader import Mode

from ..conftest import assert_same_batches, stream_loader


class UsersOwnError(ValueError):
    """An exception of the user's code: it must reach the user as itself."""


def fails(value):
    raise UsersOwnError(f"the user's function refused {type(value).__name__}")


TRANSFORMS = ("transform", "dna_transform", "target_transform")


@pytest.mark.parametrize("repo", ["parquet", "webdataset"])
@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("how", ["map-style", "streaming", "streaming, on_error=skip"])
def test_a_users_transform_error_arrives_as_itself(converted_zips, repo, transform, how):
    root = converted_zips.repos[repo]
    kw = {transform: fails}
    if how == "map-style":
        ds = BIOSCAN5M(root, "val", **kw)
        get = lambda: ds[0]  # noqa: E731
    else:
        ds = StreamingBIOSCAN5M(root, "val", on_error="skip" if "skip" in how else "raise", **kw)
        get = lambda: next(iter(ds))  # noqa: E731
    with pytest.raises(UsersOwnError, match="the user's function refused") as caught:
        get()
    assert type(caught.value) is UsersOwnError and caught.value.__cause__ is None
    frames = [frame.name for frame in traceback.extract_tb(caught.value.__traceback__)]
    assert frames[-1] == "fails"  # raised where the user raised it, not re-raised by us
    if how != "map-style":
        assert ds.skipped == {}  # nothing counted as damaged


def test_a_users_error_in_a_dataloader_worker_is_still_theirs(converted_zips):
    ds = BIOSCAN5M(converted_zips.repos["parquet"], "val", dna_transform=fails)
    with pytest.raises(UsersOwnError, match="the user's function refused"):
        next(iter(torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1)))


def test_a_damaged_image_is_still_skipped_and_named(out):
    from bioscan5m_hf.stream import outputs

    tar = out / schema.WDS_REPO
    ds = StreamingBIOSCAN5M(tar, "val", on_error="skip", transform=lambda image: image.size)
    real = outputs.open_image
    try:
        outputs.open_image = lambda data: real(data[:200])  # every image truncated
        with pytest.warns(RuntimeWarning, match=r"\.tar: member .*\.jpg does not decode"):
            assert list(ds) == []
        assert sum(ds.skipped.values()) == len(ds)
        with pytest.raises(Exception, match=r"\.tar: member .*\.jpg: image does not decode"):
            BIOSCAN5M(tar, "val")[0]
    finally:
        outputs.open_image = real


def test_make_loader_refuses_what_it_would_ignore(converted_zips):
    root = converted_zips.repos["parquet"].parent
    with pytest.raises(ValueError, match="transform"):
        make_loader(StreamingBIOSCAN5M(root, "val", transform=fails))
    with pytest.raises(ValueError, match="target_format='text'"):
        make_loader(StreamingBIOSCAN5M(root, "val", target_format="text"))
    with pytest.raises(TypeError, match="split='val' is for a root"):
        make_loader(StreamingBIOSCAN5M(root, "val"), "val")
    with pytest.raises(TypeError, match="map-style BIOSCAN5M goes to a torch DataLoader"):
        make_loader(BIOSCAN5M(root, "val"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_cuda_device_without_cuda_fails_at_construction_naming_it(converted_zips):
    with pytest.raises(RuntimeError, match=r"make_loader\(device='cuda'\): CUDA is not available to this torch"):
        make_loader(converted_zips.repos["parquet"].parent, "val", device="cuda")


def test_public_signatures_are_explicit():
    """Every keyword a public callable takes is in its signature (no **kwargs), and the datasets keep
    the official constructor's arguments, in order."""
    official = ["root", "split", "modality", "image_package", "reduce_repeated_barcodes", "max_nucleotides",
                "target_type", "target_format", "output_format", "transform", "dna_transform", "target_transform",
                "download"]
    for fn in (BIOSCAN5M, StreamingBIOSCAN5M, make_loader, BatchCollate, Storage, Composition):
        kinds = {p.kind for p in inspect.signature(fn).parameters.values()}
        assert inspect.Parameter.VAR_KEYWORD not in kinds and inspect.Parameter.VAR_POSITIONAL not in kinds, fn
    for cls in (BIOSCAN5M, StreamingBIOSCAN5M):
        assert list(inspect.signature(cls).parameters)[: len(official)] == official
    assert len(inspect.signature(make_loader).parameters) <= 16


def test_a_root_means_the_shuffled_streaming_dataset(converted_zips):
    root = converted_zips.repos["parquet"].parent
    loader = make_loader(root, "val", batch_size=2, num_workers=0, image_size=16)
    assert isinstance(loader.dataset, StreamingBIOSCAN5M) and loader.dataset.records.shuffle
    same = make_loader(StreamingBIOSCAN5M(root, "val", shuffle=True), batch_size=2, num_workers=0, image_size=16)
    assert_same_batches(list(loader), list(same))


def test_earlier_keyword_spellings_work_with_a_deprecation_warning(converted_zips, tmp_path):
    root = converted_zips.repos["parquet"].parent
    new = make_loader(StreamingBIOSCAN5M(root, "pretrain", modality=("dna",), shuffle=True, seed=3,
                                         storage=Storage(cache_dir=tmp_path / "a"),
                                         composition=Composition(filter=schema_field_is_valid("order"))),
                      batch_size=16, num_workers=2)
    with pytest.warns(DeprecationWarning) as caught:
        old = make_loader(root, "pretrain", modality=("dna",), seed=3, cache_dir=tmp_path / "b",
                          filter=schema_field_is_valid("order"), batch_size=16, num_workers=2,
                          worker_method="process", decode_threads=2)
    said = " ".join(str(w.message) for w in caught)
    assert "StreamingBIOSCAN5M(root, split, shuffle=True, modality=..., seed=..., cache_dir=..., filter=...)" in said
    assert "worker_method='process'" in said and "no effect" in said
    assert_same_batches(list(new), list(old))
    moved = r"pass composition=Composition\(balance=\.\.\., samples_per_epoch=\.\.\.\)"
    with pytest.warns(DeprecationWarning, match=moved):
        ds = StreamingBIOSCAN5M(root, "pretrain", modality=("dna",), balance="order", samples_per_epoch=50)
    assert len(ds) == 50
    with pytest.warns(DeprecationWarning, match=r"pass storage=Storage\(verify=\.\.\.\)"):
        BIOSCAN5M(root, "val", modality=("dna",), verify=True)
    with pytest.raises(TypeError, match="give them in storage=Storage"):
        StreamingBIOSCAN5M(root, "val", verify=True, storage=Storage())
    with pytest.raises(TypeError, match="give them to the dataset"):
        make_loader(StreamingBIOSCAN5M(root, "val"), seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new spelling warns of nothing
        make_loader(StreamingBIOSCAN5M(root, "val", storage=Storage(verify=True)), num_workers=0)


def schema_field_is_valid(name):
    import pyarrow.compute as pc

    return pc.field(name).is_valid()


def test_option_objects_check_their_fields_when_made():
    with pytest.raises(TypeError, match="filter must be"):
        Composition(filter="order == 'Diptera'")
    with pytest.raises(ValueError, match="temperature must be in"):
        Composition(balance="species", temperature=2)
    with pytest.raises(ValueError, match="samples_per_epoch needs"):
        Composition(samples_per_epoch=10)
    with pytest.raises(ValueError, match="Storage.cache_limit"):
        Storage(cache_limit=0)


def test_a_label_outside_the_vocabulary_is_minus_one_on_every_path(converted_zips, tmp_path):
    """A manifest whose species vocabulary leaves a label out: -1 for that label from the Arrow
    columns, the per-record path, the streaming dataset and BatchCollate alike."""
    out = tmp_path / "out"
    shutil.copytree(converted_zips.repos["parquet"].parent, out)
    manifests = [out / repo / schema.MANIFEST for repo in (schema.PARQUET_REPO, schema.WDS_REPO)]
    vocabulary = json.loads(manifests[0].read_text())["vocabularies"]["species"]
    dropped = vocabulary[-1]
    for path in manifests:
        manifest = json.loads(path.read_text())
        manifest["vocabularies"]["species"] = vocabulary[:-1]
        path.write_text(json.dumps(manifest))
    kw = dict(batch_size=16, num_workers=0, modality=("dna",), target_type="species", seed=1)
    fast, slow = stream_loader(out, "all", **kw), stream_loader(out, "all", on_error="skip", **kw)
    assert isinstance(fast.loader.dataset, ColumnarBatches) and not isinstance(slow.loader.dataset, ColumnarBatches)
    fast_batches, slow_batches = list(fast), list(slow)
    assert_same_batches(fast_batches, slow_batches)
    labels = {s["processid"]: s["species"] for s in StreamingBIOSCAN5M(out, "all", modality="processid",
                                                                       output_format="dict", target_format="text")}
    for batch in fast_batches:
        for pid, index in zip(batch["processid"], batch["species"].tolist()):
            assert (index == -1) == (labels[pid] in (dropped, None) or labels[pid] != labels[pid])
    assert any(labels[p] == dropped for b in fast_batches for p in b["processid"])
    records = {s["processid"]: s["species_index"] for s in StreamingBIOSCAN5M(out, "all", modality="processid",
                                                                              output_format="dict")}
    assert all(records[p] == i for b in fast_batches for p, i in zip(b["processid"], b["species"].tolist()))
    collate = BatchCollate(16, vocabularies={"species": vocabulary[:-1]})
    got = collate({"processid": ["a", "b", "c"], "species": [dropped, None, vocabulary[0]]})["species"].tolist()
    assert got == [-1, -1, 0]
    with pytest.raises(KeyError, match="not found"):  # the official look-up still refuses it
        BIOSCAN5M(out, "val", modality=("dna",)).label2index(dropped)


def test_make_loader_chooses_its_mode_for_the_job(converted_zips):
    root = converted_zips.repos["parquet"].parent
    images = make_loader(root, "val", num_workers=2)
    dna = make_loader(StreamingBIOSCAN5M(root, "val", modality=("dna",)), num_workers=2)
    assert isinstance(images.loader, torch.utils.data.DataLoader) and images.slots is not None
    assert type(dna.loader).__name__ == "ThreadWorkers" and dna.slots is None
    with pytest.raises(ValueError, match="decode must be one of 'auto', 'workers', 'device'"):
        make_loader(root, "val", decode="threads-and-more")


# -- batches kept whole: reused memory is reused only once nothing refers to it --------------------

KEPT_WAYS = {
    "worker processes, slots, Arrow columns": dict(num_workers=2, prefetch_factor=1),
    "worker processes, slots, per record": dict(num_workers=2, prefetch_factor=1, on_error="skip"),
    "worker processes, pinned (no slots)": dict(num_workers=2, pin_memory=True),
    "thread workers": dict(num_workers=2, mode=Mode("workers", True)),
    "no workers": dict(num_workers=0),
    "DNA-only, thread workers": dict(num_workers=2, modality=("dna",)),
}


@pytest.mark.filterwarnings("ignore:.*pin_memory.*:UserWarning")
@pytest.mark.parametrize("way", list(KEPT_WAYS))
def test_every_batch_kept_stays_intact_in_every_way(converted_zips, way):
    """A consumer keeping every batch of an epoch, and views into them: at the end each still holds
    what it held when it arrived (no buffer was reused under it)."""
    root = converted_zips.repos["parquet"].parent
    kw = dict(batch_size=8, image_size=16, seed=3, target_type=["order", "species"]) | KEPT_WAYS[way]
    kept, views, copies = [], [], []
    for batch in stream_loader(root, "pretrain", **kw):
        tensors = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
        kept.append(tensors)
        views.append([v[1:3] for v in tensors.values()])
        copies.append({k: v.clone() for k, v in tensors.items()})
    assert len(kept) > 20
    for batch, view, copy in zip(kept, views, copies):
        for (k, v), part in zip(batch.items(), view):
            assert torch.equal(v, copy[k]) and torch.equal(part, copy[k][1:3]), (way, k)


def test_batch_collate_batches_kept_stay_intact(converted_zips):
    import datasets

    repo = converted_zips.repos["parquet"]
    ds = datasets.load_dataset(str(repo), "cropped_256", split="pretrain", streaming=True,
                               columns=["processid", "image", "dna_barcode", "species"])
    ds = ds.cast_column("image", datasets.Image(decode=False))
    vocabularies = json.loads((repo / schema.MANIFEST).read_text())["vocabularies"]
    collate = BatchCollate(16, vocabularies={"species": vocabularies["species"]}, batch_size=8, slots=3)
    loader = torch.utils.data.DataLoader(ds.batch(8), batch_size=None, num_workers=2, collate_fn=collate,
                                         multiprocessing_context="fork")
    kept = [(b["image"], b["image"][1:3], b["image"].clone()) for b in loader]
    assert len(kept) > 10
    assert all(torch.equal(image, copy) and torch.equal(view, copy[1:3]) for image, view, copy in kept)


def test_batch_buffers_are_reused_only_once_no_tensor_or_view_of_a_batch_is_left():
    from bioscan5m_hf.stream.images import BatchBuffers

    buffers = BatchBuffers()
    a = torch.from_numpy(buffers.get((2, 3)))
    first, view = a.data_ptr(), a[1:]
    del a
    b = torch.from_numpy(buffers.get((2, 3)))
    assert b.data_ptr() != first  # a view of the first batch is still held
    del view
    c = torch.from_numpy(buffers.get((2, 3)))
    assert c.data_ptr() == first  # free again once nothing refers to it
    assert torch.from_numpy(buffers.get((4, 3))).data_ptr() not in (first, b.data_ptr())  # another size
