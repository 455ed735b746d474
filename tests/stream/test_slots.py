"""Image batches from worker processes through reused shared-memory slots: the same batches, a slot
never overwritten while anything refers to its batch."""

import multiprocessing
import pickle

import pytest
import torch

from bioscan5m_hf.stream.images import WorkerImages
from bioscan5m_hf.stream.loader import Mode
from bioscan5m_hf.stream.slots import VIEW_FROM, CollateSlots, ImageSlots, InSlot, SlotRef

from ..conftest import assert_same_batches, stream_loader


def _claim_and_send(slots: ImageSlots | CollateSlots, worker: int, count: int, value: int, out) -> None:
    claimed = slots.claim(worker, count)
    if claimed is not None:
        claimed[1][:] = value
    out.put(slots.pack({"image": claimed[0]}) if claimed is not None else None)


def sent_from_worker(slots: ImageSlots | CollateSlots, value: int, worker: int = 0, count: int = 2):
    """The batch a forked worker process claims a slot for, writes ``value`` into and sends back
    (None: no slot was free): ``{"image": SlotRef}``, or for CollateSlots the batch of tensors its
    SlotBatch unpickles as here."""
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    process = context.Process(target=_claim_and_send, args=(slots, worker, count, value, out))
    process.start()
    sent = out.get(timeout=30)
    process.join()
    return sent


def image_in(slots: ImageSlots, sent: dict) -> torch.Tensor:
    """Main process: the images of a batch a worker sent as only its SlotRef."""
    return slots.take(sent)["image"]


def test_a_slot_is_held_while_anything_refers_to_its_batch_then_reused():
    slots = ImageSlots(num_workers=2, per_worker=2, batch_size=4, size=3)
    a = sent_from_worker(slots, 7, worker=1)
    assert a["image"].slot in (2, 3) and a["image"].count == 2  # worker 1's own slots
    image = image_in(slots, a)
    assert image.shape == (2, 3, 3, 3) and image.is_contiguous(memory_format=torch.channels_last)
    assert (image == 7).all() and slots.held == 1
    view, array = image[1, 0], image.numpy()  # views and arrays made from the batch keep it held
    del image
    assert slots.held == 1
    del view
    assert slots.held == 1
    b = sent_from_worker(slots, 8, worker=1)
    assert b["image"].slot != a["image"].slot
    assert (image_in(slots, b) == 8).all()  # the batch taken here is dropped at once...
    c = sent_from_worker(slots, 9, worker=1)
    assert c["image"].slot == b["image"].slot  # ...and its slot was free again at once
    kept = image_in(slots, c)
    assert sent_from_worker(slots, 10, worker=1) is None and slots.fallbacks == 1  # a's and c's slots held
    assert (array == 7).all() and (kept == 9).all()  # nothing overwrote the held batches
    del array
    assert slots.held == 1
    d = sent_from_worker(slots, 11, worker=1)
    assert d["image"].slot == a["image"].slot and (image_in(slots, d) == 11).all() and slots.fallbacks == 1
    del kept
    assert slots.held == 0


def _pack_and_send(slots: ImageSlots, batch: dict, out, received) -> None:
    ref, view = slots.claim(0, 2)
    view[:] = 7
    out.put(slots.pack({**batch, "image": ref}))
    received.wait(30)  # a tensor sent in torch's shared memory is fetched from this process


def test_a_batch_s_other_tensors_travel_in_its_slot_large_ones_viewed_small_ones_copied():
    slots = ImageSlots(num_workers=1, per_worker=2, batch_size=2, size=3, extra_bytes=VIEW_FROM + 1024)
    batch = {"processid": ["a", "b"], "image": None,
             "dna": torch.arange(VIEW_FROM // 8).reshape(2, -1),  # VIEW_FROM bytes: a view
             "species": torch.tensor([3, -1]), "padding": torch.tensor([False, True]),
             "too_big": torch.zeros(1024, dtype=torch.int64)}  # no room left after the others
    context = multiprocessing.get_context("fork")
    out, received = context.Queue(), context.Event()
    process = context.Process(target=_pack_and_send, args=(slots, batch, out, received))
    process.start()
    sent = out.get(timeout=30)
    received.set()
    process.join()
    assert isinstance(sent["image"], SlotRef) and isinstance(sent["dna"], InSlot)
    assert isinstance(sent["species"], InSlot) and isinstance(sent["padding"], InSlot)
    assert isinstance(sent["too_big"], torch.Tensor)  # stays a tensor: torch's own shared memory
    got = slots.take(sent)
    assert list(got) == list(batch)  # the same keys in the same order
    for key in ("dna", "species", "padding", "too_big"):
        assert got[key].dtype == batch[key].dtype and torch.equal(got[key], batch[key]), key
    assert (got["image"] == 7).all() and got["processid"] == ["a", "b"]
    labels, dna = got["species"], got["dna"]
    del got
    assert slots.held == 1  # the DNA ids view the slot
    del dna
    assert slots.held == 0 and torch.equal(labels, batch["species"])  # labels kept are a copy: the slot is free


def test_slots_claimed_and_never_delivered_are_free_in_the_next_iteration():
    slots = ImageSlots(num_workers=1, per_worker=2, batch_size=2, size=2)
    sent_from_worker(slots, 1), sent_from_worker(slots, 2)  # both on their way when the consumer left
    assert sent_from_worker(slots, 3, worker=0) is None
    slots.new_generation()
    assert sent_from_worker(slots, 4, worker=0) is not None


def test_slots_stay_with_the_processes_that_share_them():
    slots = ImageSlots(num_workers=1, per_worker=1, batch_size=1, size=1)
    with pytest.raises(TypeError, match="not pickled"):
        pickle.dumps(slots)
    images = WorkerImages(1, slots=slots)
    assert pickle.loads(pickle.dumps(images)).slots is None  # a copy elsewhere sends fresh memory


#: The same batches made without slots (thread workers decoding in this process): the reference.
THREADS = Mode("workers", True)
KW = dict(batch_size=8, image_size=16, seed=3, target_type=["order", "species"], modality=("image", "dna"))


def copied_from(batches, loader, every_batch_in_a_slot: bool = True) -> list[dict]:
    """A training loop's view: each batch used, then dropped (copied here to compare afterwards)."""
    out = []
    for batch in batches:
        assert loader.slots.held >= 1 or not every_batch_in_a_slot  # this batch's images are in a slot
        out.append({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
    return out


def copied(loader, epochs: int = 1) -> list[dict]:
    return [b for _ in range(epochs) for b in copied_from(loader, loader)]


@pytest.mark.parametrize("how", [dict(num_workers=2), dict(num_workers=3, augment=True, drop_last=True, mask_dna=0.2),
                                 dict(num_workers=2, persistent_workers=False, device="cpu"),
                                 dict(num_workers=2, on_error="skip")])  # the per-record path
def test_worker_processes_send_images_through_slots_with_the_same_batches(converted_zips, how):
    root = converted_zips.repos["parquet"].parent
    loader = stream_loader(root, "pretrain", **KW, **how)
    through_slots = copied(loader, epochs=2)
    assert loader.slots.fallbacks == 0  # every batch went through a slot
    threads = stream_loader(root, "pretrain", mode=THREADS, **KW, **how)
    assert threads.slots is None
    assert_same_batches(through_slots, [b for _ in range(2) for b in threads])


def test_labels_kept_from_every_batch_leave_the_slots_free_dna_ids_kept_hold_them(converted_zips):
    root = converted_zips.repos["parquet"].parent
    kw = {**KW, "batch_size": 64}  # DNA ids of VIEW_FROM bytes and more (165 int64 per record): views
    loader = stream_loader(root, "pretrain", num_workers=2, prefetch_factor=1, **kw)
    labels = [batch["species"] for batch in loader]
    assert loader.slots.held == 0 and loader.slots.fallbacks == 0
    dna = [batch["dna"] for batch in loader]
    viewed = sum(ids.numel() * 8 >= VIEW_FROM for ids in dna)  # the last, shorter batches' are copies
    assert loader.slots.held == viewed >= 2  # each kept view holds its batch's slot
    threads = stream_loader(root, "pretrain", num_workers=2, mode=THREADS, **kw)
    assert all(torch.equal(a, b["species"]) for a, b in zip(labels, threads, strict=True))  # epoch 0
    assert all(torch.equal(a, b["dna"]) for a, b in zip(dna, threads, strict=True))  # epoch 1


def test_a_consumer_keeping_every_batch_gets_them_all_intact(converted_zips):
    root = converted_zips.repos["parquet"].parent
    loader = stream_loader(root, "pretrain", num_workers=2, prefetch_factor=1, **KW)
    kept = list(loader)
    assert loader.slots.fallbacks > 0 and loader.slots.held == loader.slots.slot_count
    assert_same_batches(kept, list(stream_loader(root, "pretrain", num_workers=2, mode=THREADS, **KW)))


def test_leaving_an_epoch_early_then_training_on(converted_zips):
    """Batches still on their way when the consumer left may be claimed after the next iteration
    began (their workers were persistent): that iteration may fall back to fresh memory for a few
    batches, never with wrong images, and the one after it has every slot again."""
    root = converted_zips.repos["parquet"].parent
    loader = stream_loader(root, "pretrain", num_workers=2, **KW)
    left = iter(loader)
    next(left), next(left)
    loader.set_epoch(1)
    resumed = iter(loader)  # ends the iteration left
    with pytest.raises(StopIteration):
        next(left)
    rest = copied_from(resumed, loader, every_batch_in_a_slot=False)
    before = loader.slots.fallbacks
    then = copied(loader)
    assert loader.slots.fallbacks == before
    threads = stream_loader(root, "pretrain", num_workers=2, mode=THREADS, **KW)
    threads.set_epoch(1)
    assert_same_batches(rest + then, [b for _ in range(2) for b in threads])


def test_slots_only_where_worker_processes_decode_into_unpinned_memory(converted_zips):
    root = converted_zips.repos["parquet"].parent
    assert stream_loader(root, "pretrain", num_workers=2, **KW).slots is not None
    for other in (dict(num_workers=0), dict(pin_memory=True), dict(mode=THREADS),
                  dict(modality=("dna",))):
        assert stream_loader(root, "pretrain", **{**KW, "num_workers": 2, **other}).slots is None, other
    slots = stream_loader(root, "pretrain", num_workers=2, **KW).slots
    assert slots.slot_count == 2 * (4 + 3) and slots.image_bytes == 8 * 16 * 16 * 3  # per worker: prefetch_factor + 3
    dna = 2 * 8 * 165 * 8  # int64 token ids and mask: 165 4-mers of 660 nucleotides
    assert slots.image_bytes + dna + 2 * 8 * 8 <= slots.slot_bytes  # and the two targets' labels


# -- CollateSlots: BatchCollate's slots in a plain DataLoader --------------------------------------


def test_a_collate_slot_arrives_as_its_tensor_and_is_reused_once_dropped():
    slots = CollateSlots(2, batch_size=4, size=3)
    a = sent_from_worker(slots, 5)["image"]
    assert isinstance(a, torch.Tensor) and a.shape == (2, 3, 3, 3) and (a == 5).all() and slots.held == 1
    b = sent_from_worker(slots, 6)["image"]
    assert (b == 6).all() and slots.held == 2
    assert sent_from_worker(slots, 7) is None and slots.fallbacks == 1  # both held: fresh memory then
    assert (a == 5).all() and (b == 6).all()  # nothing overwrote them
    del a  # its slot is free again at once
    c = sent_from_worker(slots, 8)["image"]
    assert (c == 8).all() and (b == 6).all() and slots.fallbacks == 1
    assert sent_from_worker(slots, 9, count=5) is None and slots.fallbacks == 2  # larger than a slot


def _claim_only(slots: CollateSlots) -> None:
    slots.claim(0, 1)  # claimed, never sent: the process ends


def test_a_slot_claimed_by_a_process_that_ended_is_free_again():
    slots = CollateSlots(1, batch_size=1, size=1)
    process = multiprocessing.get_context("fork").Process(target=_claim_only, args=(slots,))
    process.start(), process.join()
    assert slots.state[1] == process.pid  # still marked with the process that claimed it
    assert (sent_from_worker(slots, 3, count=1)["image"] == 3).all() and slots.fallbacks == 0


def test_a_slot_batch_unpickles_only_where_its_slots_were_made():
    slots = CollateSlots(1, batch_size=1, size=1, extra_bytes=64)
    ref, _ = slots.claim(0, 1)
    data = pickle.dumps(slots.pack({"image": ref, "species": torch.tensor([4])}))
    batch = pickle.loads(data)  # here: the owner
    assert type(batch) is dict and (batch["image"] == 0).all() and batch["species"].tolist() == [4]
    del slots, batch
    with pytest.raises(RuntimeError, match="only by the process that made the BatchCollate"):
        pickle.loads(data)
