import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bioscan5m_hf.convert import sharding as plan


def shuffled(pids, seed=0):
    return np.argsort(plan.order_keys(pids, seed), kind="stable")


def test_the_order_is_a_seeded_permutation_independent_of_input_order():
    pids = [f"PID{i}-20" for i in range(500)]
    order = shuffled(pids)
    assert sorted(order.tolist()) == list(range(500))
    assert order.tolist() != list(range(500))
    assert shuffled(pids, 1).tolist() != order.tolist()
    # The order of processids does not depend on the order they came in.
    reversed_pids = pids[::-1]
    assert [reversed_pids[i] for i in shuffled(reversed_pids)] == [pids[i] for i in order]


@pytest.mark.parametrize("n, nbytes, shard_bytes, shard_records, expected", [
    (0, 0, 100, None, 0),
    (1, 10**9, 100, None, 1),  # never more shards than records
    (100, 1000, 1000, None, 1),
    (100, 1001, 1000, None, 2),
    (100, 10, 1000, 30, 4),
    (5, 10, 1000, 1, 5),
])
def test_shard_count(n, nbytes, shard_bytes, shard_records, expected):
    assert plan.shard_count(n, nbytes, shard_bytes, shard_records) == expected


def test_limits_must_be_positive():
    keys, sizes = np.arange(10, dtype=np.uint64), np.ones(10)
    for bad in (dict(shard_bytes=0), dict(shard_bytes=100, shard_records=0)):
        with pytest.raises(ValueError, match="must be positive"):
            plan.shard_count(10, 10, **bad)
        with pytest.raises(ValueError, match="must be positive"):
            plan.key_ranges(keys, sizes, **bad)


def split(n, seed=0):
    pids = [f"S{seed}-{i}" for i in range(n)]
    keys = plan.order_keys(pids, 0)
    order = np.argsort(keys, kind="stable")
    return [pids[i] for i in order], keys[order]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 3000), shard_bytes=st.integers(50, 20_000),
       shard_records=st.one_of(st.none(), st.integers(1, 500)), min_shards=st.integers(1, 32))
def test_shards_cover_every_record_once_within_the_limits(n, shard_bytes, shard_records, min_shards):
    pids, keys = split(n)
    sizes = np.random.default_rng(n).integers(1, 60, n)
    runs = plan.key_ranges(keys, sizes, shard_bytes, shard_records, min_shards)
    edges = [0] + [b for _, b in runs]
    assert [a for a, _ in runs] == edges[:-1] and edges[-1] == n
    for a, b in runs:
        assert b > a
        assert b - a == 1 or (sizes[a:b].sum() <= shard_bytes and (shard_records is None or b - a <= shard_records))
    wanted = min(min_shards, n // plan.MIN_SHARD_RECORDS)
    if wanted > 1:  # min_shards, as a power of two not above it, where the records allow
        assert len(runs) >= 2 ** (wanted.bit_length() - 1) * 0.5  # an empty key range makes no shard


@pytest.mark.parametrize("edit", ["withdraw", "add"])
def test_an_edit_changes_only_the_shards_its_records_fall_in(edit):
    pids, keys = split(20_000)
    sizes = np.full(len(pids), 100)
    before = [tuple(pids[a:b]) for a, b in plan.key_ranges(keys, sizes, shard_bytes=100_000, min_shards=16)]
    rng = np.random.default_rng(1)
    if edit == "withdraw":
        keep = np.ones(len(pids), bool)
        keep[rng.choice(len(pids), 20, replace=False)] = False
        new_pids, new_keys = [p for p, k in zip(pids, keep) if k], keys[keep]
    else:
        extra, extra_keys = split(20, seed=9)
        merged = sorted(zip(keys.tolist() + extra_keys.tolist(), pids + extra))
        new_keys = np.array([k for k, _ in merged], dtype=np.uint64)
        new_pids = [p for _, p in merged]
    after = [tuple(new_pids[a:b]) for a, b in plan.key_ranges(new_keys, np.full(len(new_pids), 100),
                                                               shard_bytes=100_000, min_shards=16)]
    assert len(before) == len(after) == 32  # 2 MB in ranges of at most 100 kB: 16 halved once
    changed = sum(a != b for a, b in zip(before, after))
    assert 0 < changed <= 20  # each edited record's shard, and no other


def test_plan_split_every_row_once_and_bytes_add_up():
    pids, keys = split(1000)
    rows = np.random.default_rng(0).permutation(1000)
    sizes = np.full(1000, 7)
    shards = plan.plan_split("cropped_256", "train", rows, keys, sizes, shard_bytes=1000, shard_records=None)
    assert len(shards) == 8  # 7000 bytes in ranges of at most 1000: 8 key ranges
    assert np.concatenate([s.rows for s in shards]).tolist() == rows.tolist()
    assert [s.index for s in shards] == list(range(8))
    assert sum(s.num_bytes for s in shards) == 7000
