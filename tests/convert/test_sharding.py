import numpy as np
import pytest

from bioscan5m_hf.convert import sharding as plan


def test_shuffled_order_is_a_seeded_permutation_independent_of_input_order():
    pids = [f"PID{i}-20" for i in range(500)]
    order = plan.shuffled_order(pids, seed=0)
    assert sorted(order.tolist()) == list(range(500))
    assert order.tolist() != list(range(500))
    assert plan.shuffled_order(pids, 0).tolist() == order.tolist()
    assert plan.shuffled_order(pids, 1).tolist() != order.tolist()
    # The order of processids does not depend on the order they came in.
    reversed_pids = pids[::-1]
    assert [reversed_pids[i] for i in plan.shuffled_order(reversed_pids, 0)] == [pids[i] for i in order]


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


def test_shard_count_rejects_nonpositive_limits():
    with pytest.raises(ValueError):
        plan.shard_count(10, 10, 0)
    with pytest.raises(ValueError):
        plan.shard_count(10, 10, 100, 0)


@pytest.mark.parametrize("n, k", [(10, 3), (7, 7), (1000, 16), (5, 1), (17, 4)])
def test_shard_bounds_cover_once_and_balance(n, k):
    bounds = plan.shard_bounds(n, k)
    assert len(bounds) == k
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [b - a for a, b in bounds]
    assert max(sizes) - min(sizes) <= 1


def test_plan_split_every_row_once_and_bytes_add_up():
    rows = np.random.default_rng(0).permutation(1000)
    sizes = np.full(1000, 7)
    shards = plan.plan_split("cropped_256", "train", rows, sizes, shard_bytes=1000, shard_records=None)
    assert len(shards) == 7  # 7000 bytes / 1000
    assert np.concatenate([s.rows for s in shards]).tolist() == rows.tolist()
    assert [s.index for s in shards] == list(range(7))
    assert sum(s.num_bytes for s in shards) == 7000
