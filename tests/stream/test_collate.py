import json
import pickle

import datasets
import pytest
import torch

from bioscan5m_hf import BatchCollate
from bioscan5m_hf.errors import ShardError

from ..conftest import stream_loader

COLUMNS = ["processid", "image", "dna_barcode", "species"]
KEYS = ("image", "dna", "dna_mask")


def datasets_batches(repo, split: str, collate, num_workers: int):
    ds = datasets.load_dataset(str(repo), "cropped_256", split=split, streaming=True, columns=COLUMNS)
    ds = ds.cast_column("image", datasets.Image(decode=False)).batch(16)
    return list(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=num_workers, collate_fn=collate,
                                            multiprocessing_context="fork" if num_workers else None))


def by_record(batches, keys=("image", "dna", "dna_mask", "species")):
    return {pid: tuple(b[k][i] for k in keys) for b in batches for i, pid in enumerate(b["processid"])}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_the_datasets_route_gives_make_loaders_batches(converted_zips, num_workers):
    """Every record once, with make_loader's pixels, token ids, mask and label index."""
    repo = converted_zips.repos["parquet"]
    vocabularies = json.loads((repo / "manifest.json").read_text())["vocabularies"]
    collate = BatchCollate(image_size=24, vocabularies={"species": vocabularies["species"]})
    ours = datasets_batches(repo, "train", collate, num_workers)
    b = ours[0]
    assert b["image"].dtype == torch.uint8 and b["image"].shape == (16, 3, 24, 24)
    assert b["dna"].shape == (16, 165) and b["species"].dtype == torch.int64
    theirs = list(stream_loader(repo.parent, "train", batch_size=16, num_workers=0, image_size=24,
                              target_type="species", shuffle=False))
    ours, theirs = by_record(ours), by_record(theirs)
    assert ours.keys() == theirs.keys()
    for pid, values in theirs.items():
        assert all(torch.equal(x, y) for x, y in zip(ours[pid], values)), pid
    assert any(label >= 0 for _, _, _, label in ours.values())


def test_columns_without_vocabulary_pass_through_and_unknown_labels_are_minus_one():
    collate = BatchCollate(vocabularies={"order": ["Diptera", "Hymenoptera"]})
    out = collate({"processid": ["a", "b"], "dna_barcode": ["ACGT", "NN"], "order": ["Hymenoptera", None],
                   "family": ["Cecidomyiidae", None]})
    assert out["order"].tolist() == [1, -1] and out["family"] == ["Cecidomyiidae", None]
    assert out["dna"].shape == (2, 165) and out["dna_mask"][0, 0] == 1 and "image" not in out


def test_an_image_that_does_not_decode_names_its_record():
    collate = BatchCollate(image_size=8)
    with pytest.raises(ShardError, match=r"BIOUG001\.jpg: image does not decode"):
        collate({"processid": ["BIOUG001"], "image": [{"bytes": b"\xff\xd8 not a jpeg", "path": None}]})
    for missing in (None, {"bytes": None, "path": None}):
        with pytest.raises(ShardError, match="record BIOUG002 has no image bytes"):
            collate({"processid": ["BIOUG002"], "image": [missing]})


def test_worker_batches_reuse_the_collates_slots_and_kept_batches_are_never_overwritten(converted_zips):
    repo = converted_zips.repos["parquet"]
    fresh = datasets_batches(repo, "pretrain", BatchCollate(image_size=24, slots=0), num_workers=2)
    dropping = BatchCollate(image_size=24, batch_size=16, slots=8)
    ds = datasets.load_dataset(str(repo), "cropped_256", split="pretrain", streaming=True, columns=COLUMNS)
    ds = ds.cast_column("image", datasets.Image(decode=False)).batch(16)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, collate_fn=dropping,
                                         multiprocessing_context="fork")
    for _ in range(2):  # two epochs, each batch dropped before the next: every one through a slot
        assert sum(len(b["processid"]) for b in loader) == sum(len(b["processid"]) for b in fresh)
    assert dropping.slots.fallbacks == 0 and dropping.slots.held == 0
    keeping = BatchCollate(image_size=24, batch_size=16, slots=2)
    kept = datasets_batches(repo, "pretrain", keeping, num_workers=2)  # a consumer keeping every batch
    assert keeping.slots.fallbacks > 0 and keeping.slots.held == 2
    kept, fresh = by_record(kept, KEYS), by_record(fresh, KEYS)
    assert kept.keys() == fresh.keys()
    for pid, values in fresh.items():
        assert all(torch.equal(x, y) for x, y in zip(kept[pid], values)), pid


def test_a_copy_in_a_spawned_process_collates_into_fresh_memory():
    copy = pickle.loads(pickle.dumps(BatchCollate(image_size=8, slots=2)))
    assert copy.slots is None and copy.images.slots is None
    out = copy({"processid": ["a"], "dna_barcode": ["ACGT"]})
    assert out["dna"].shape == (1, 165)
