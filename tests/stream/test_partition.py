from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bioscan5m_hf.stream import partition


def all_reads(sizes, world_size, num_workers, even="pad", epoch=0, shuffle=True, buffer_size=8, seed=0):
    """(rank, worker) -> list of (shard, offset) in yield order."""
    out = {}
    for rank in range(world_size):
        for worker in range(num_workers):
            plan = partition.worker_plan(sizes, seed=seed, epoch=epoch, shuffle=shuffle, rank=rank,
                                         world_size=world_size, worker=worker, num_workers=num_workers, even=even,
                                         buffer_size=buffer_size)
            out[rank, worker] = [(int(plan.shards[i]), int(plan.offsets[i])) for i in plan.emission]
    return out


shard_sizes = st.lists(st.integers(min_value=0, max_value=30), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(sizes=shard_sizes, world_size=st.integers(1, 4), num_workers=st.integers(1, 4),
       even=st.sampled_from(["pad", "drop"]), epoch=st.integers(0, 5), buffer_size=st.integers(1, 20))
def test_exactly_once_per_epoch_with_equal_counts_per_rank(sizes, world_size, num_workers, even, epoch, buffer_size):
    reads = all_reads(sizes, world_size, num_workers, even, epoch, buffer_size=buffer_size)
    total = sum(sizes)
    counts = Counter(r for seq in reads.values() for r in seq)
    records = {(s, o) for s, n in enumerate(sizes) for o in range(n)}
    per_rank = [sum(len(reads[r, w]) for w in range(num_workers)) for r in range(world_size)]
    assert len(set(per_rank)) == 1  # every rank the same count: DDP never waits
    if even == "pad":
        assert set(counts) == records
        assert per_rank[0] == (-(-total // world_size) if total else 0)
        assert sum(counts.values()) - total == per_rank[0] * world_size - total  # only the documented padding
        if total:  # padding spreads the repeats: nobody is repeated more than needed
            assert max(counts.values()) <= -(-per_rank[0] * world_size // total)
    else:
        assert set(counts) <= records and all(v == 1 for v in counts.values())
        assert per_rank[0] == total // world_size
    worker_counts = [len(reads[0, w]) for w in range(num_workers)]
    assert max(worker_counts) - min(worker_counts) <= 1


def test_same_seed_and_epoch_same_order_other_epoch_other_order():
    sizes = [40, 40, 40, 37]
    a = all_reads(sizes, 2, 2, epoch=3)
    assert a == all_reads(sizes, 2, 2, epoch=3)
    assert a != all_reads(sizes, 2, 2, epoch=4)
    assert a != all_reads(sizes, 2, 2, epoch=3, seed=1)
    unshuffled = all_reads(sizes, 1, 1, shuffle=False)[0, 0]
    assert unshuffled == [(s, o) for s, n in enumerate(sizes) for o in range(n)]


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 300), buffer_size=st.integers(1, 50), seed=st.integers(0, 2**32))
def test_buffer_shuffle_is_a_bounded_permutation(n, buffer_size, seed):
    order = partition.buffer_shuffle(n, buffer_size, (seed,))
    assert sorted(order.tolist()) == list(range(n))
    assert all(order[t] < t + buffer_size for t in range(n))


def test_buffer_shuffle_mixes():
    order = partition.buffer_shuffle(1000, 100, (0,))
    assert np.corrcoef(order, np.arange(1000))[0, 1] < 0.999
    assert (order[:-1] > order[1:]).sum() > 300


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 200), buffer_size=st.integers(1, 30), data=st.data())
def test_resume_point_replays_the_rest_with_bounded_memory(n, buffer_size, data):
    emission = partition.buffer_shuffle(n, buffer_size, (1,))
    done = data.draw(st.integers(0, n))
    start, skip = partition.resume_point(emission, done)
    # Read sequentially from `start`, skipping what was yielded, buffering until needed.
    reads = iter(p for p in range(start, n) if p not in set(skip.tolist()))
    pending, out, peak = set(), [], 0
    for t in range(done, n):
        while emission[t] not in pending:
            pending.add(next(reads))
            peak = max(peak, len(pending))
        pending.remove(emission[t])
        out.append(int(emission[t]))
    assert out == emission[done:].tolist()
    assert peak <= buffer_size


@pytest.mark.parametrize("total, ws, even, expected", [
    (10, 3, "pad", [(0, 4), (4, 4), (8, 4)]),
    (10, 3, "drop", [(0, 3), (3, 3), (6, 3)]),
    (2, 4, "pad", [(0, 1), (1, 1), (2, 1), (3, 1)]),
    (2, 4, "drop", [(0, 0)] * 4),
    (0, 2, "pad", [(0, 0), (0, 0)]),
])
def test_rank_block(total, ws, even, expected):
    got = [partition.rank_block(total, r, ws, even) for r in range(ws)]
    assert [c for _, c in got] == [c for _, c in expected]
    if even == "pad" or total >= ws:
        assert [s for s, _ in got] == [s for s, _ in expected]


def test_rank_block_rejects_bad_arguments():
    with pytest.raises(ValueError, match="rank 2"):
        partition.rank_block(10, 2, 2)
    with pytest.raises(ValueError, match="even"):
        partition.rank_block(10, 0, 2, "round")


@pytest.mark.parametrize("counts, bs, batches, drop_last, expected, next_worker", [
    ([10, 10], 4, 0, False, [0, 0], 0),
    ([10, 10], 4, 3, False, [2, 1], 1),
    ([10, 9], 4, 6, False, [3, 3], 0),
    ([5, 3], 4, 3, False, [2, 1], 1),   # worker 1 ran out after one batch: its turn yields nothing
    ([9, 3], 4, 4, False, [3, 1], 1),
    ([9, 3], 4, 2, True, [2, 0], 1),    # drop_last: worker 1 has no full batch
    ([4, 4, 4], 2, 4, False, [2, 1, 1], 1),
])
def test_loader_progress(counts, bs, batches, drop_last, expected, next_worker):
    assert partition.loader_progress(counts, bs, batches, drop_last) == (expected, next_worker)


def test_loader_progress_past_the_epoch_is_an_error():
    with pytest.raises(ValueError, match="more than the epoch"):
        partition.loader_progress([4, 4], 4, 3)


topology = st.tuples(st.integers(1, 4), st.integers(1, 3))


@settings(max_examples=300, deadline=None)
@given(sizes=shard_sizes, topologies=st.lists(topology, min_size=2, max_size=4), even=st.sampled_from(["pad", "drop"]),
       buffer_size=st.integers(1, 12), data=st.data())
def test_elastic_phases_yield_every_record_once(sizes, topologies, even, buffer_size, data):
    """Checkpoint at random points under W x N, resume under W' x N' (and again): over the epoch every
    record comes once; besides, only samples flagged as padding (pad) or fewer than W' left out (drop)."""
    kw = dict(seed=4, epoch=1, shuffle=True, even=even, buffer_size=buffer_size)
    phases, real, padded = [], Counter(), 0
    for k, (world_size, num_workers) in enumerate(topologies):
        last = k == len(topologies) - 1
        plans = {(r, w): partition.worker_plan(sizes, rank=r, world_size=world_size, worker=w, num_workers=num_workers,
                                               phases=phases, **kw)
                 for r in range(world_size) for w in range(num_workers)}
        counts = {len(p) for p in plans.values()}
        assert max(counts) - min(counts) <= 1  # workers balanced, ranks equal
        # Lockstep: every rank has yielded as much from each of its workers (rank 0's state is enough).
        done = tuple(len(plans[0, w]) if last else data.draw(st.integers(0, len(plans[0, w])))
                     for w in range(num_workers))
        for (_, w), plan in plans.items():
            for t in plan.emission[: done[w]]:
                if plan.padding[t]:
                    padded += 1
                else:
                    real[int(plan.shards[t]), int(plan.offsets[t])] += 1
        phases.append(partition.Phase(world_size, num_workers, done))
    everything = {(s, o) for s, n in enumerate(sizes) for o in range(n)}
    assert all(n == 1 for n in real.values())
    assert set(real) <= everything
    if even == "pad":
        assert set(real) == everything
    else:
        assert len(everything) - len(real) < sum(w for w, _ in topologies)  # what "drop" leaves out, per phase


def test_a_phase_cannot_claim_more_than_it_read():
    with pytest.raises(ValueError, match="cannot have yielded"):
        partition.worker_plan([5, 5], seed=0, epoch=0, shuffle=True, phases=[partition.Phase(2, 1, (9,))])


def test_phases_of_a_fresh_epoch_change_nothing():
    a = partition.worker_plan([4, 7, 3], seed=1, epoch=2, shuffle=True, rank=1, world_size=2, buffer_size=4)
    b = partition.worker_plan([4, 7, 3], seed=1, epoch=2, shuffle=True, rank=1, world_size=2, buffer_size=4,
                              phases=[partition.Phase(3, 2, (0, 0))])
    assert a.shards.tolist() == b.shards.tolist() and a.offsets.tolist() == b.offsets.tolist()


def test_padding_flags_exactly_the_repeats():
    reads = [partition.worker_plan([3, 4], seed=0, epoch=0, shuffle=False, rank=r, world_size=3) for r in range(3)]
    flagged = [(int(p.shards[i]), int(p.offsets[i])) for p in reads for i in range(len(p)) if p.padding[i]]
    assert len(flagged) == 3 * 3 - 7
    real = Counter((int(p.shards[i]), int(p.offsets[i])) for p in reads for i in range(len(p)) if not p.padding[i])
    assert set(real.values()) == {1} and len(real) == 7
