"""The one epoch planner both streams use, checked on its own over a grid (no shards, no torch)."""
import itertools

import numpy as np
import pytest

from t2i_data.errors import T2IError
from t2i_data.plan import PlannedStream, plan_epoch, plan_exact

SIZES = [[29] * 7, [1, 0, 40, 3, 17], [5], [0, 0, 9, 0], [13, 2, 2, 2, 30, 7, 1, 11]]
GRID = list(itertools.product(range(len(SIZES)), [1, 2, 3], [0, 1, 3], [1, 4, 7]))


def _taken(plan) -> list[list[tuple[int, int]]]:
    """Per global worker, the (shard, sample) pairs it takes, in order."""
    return [[(s, i) for s, a, b in mine for i in range(a, b)] for mine in plan.ranges]


def _shard_order(plan) -> list[int]:
    return [s for mine in plan.ranges for s, _, _ in mine]


@pytest.mark.parametrize("case,world,workers,batch", GRID)
def test_exact_plans_give_every_sample_once_and_equal_batch_counts(case, world, workers, batch):
    sizes, g = SIZES[case], world * max(workers, 1)
    plan = plan_exact(sizes, world, workers, batch, seed=3, epoch=1)
    taken = _taken(plan)
    flat = [p for t in taken for p in t]
    assert sorted(flat) == [(s, i) for s, n in enumerate(sizes) for i in range(n)]  # each sample exactly once
    counts = [len(t) for t in taken]
    assert len(counts) == g and max(counts) - min(counts) <= 1 and counts == sorted(counts, reverse=True)
    assert plan.batches == -(-max(counts) // batch) and plan.samples == sum(sizes)
    assert all(0 <= a < b <= sizes[s] for mine in plan.ranges for s, a, b in mine)


@pytest.mark.parametrize("case,world,workers,batch", GRID)
def test_whole_batch_plans_never_repeat_and_leave_fewer_than_a_batch_per_worker(case, world, workers, batch):
    sizes, g = SIZES[case], world * max(workers, 1)
    if sum(sizes) // g < batch:
        with pytest.raises(T2IError, match=f"cannot give every one of {g} workers a batch of {batch}"):
            plan_epoch(sizes, world, workers, batch, seed=3, epoch=1)
        return
    plan = plan_epoch(sizes, world, workers, batch, seed=3, epoch=1)
    taken = _taken(plan)
    flat = [p for t in taken for p in t]
    assert len(flat) == len(set(flat)) == plan.samples == g * plan.batches * batch
    assert [len(t) for t in taken] == [plan.batches * batch] * g
    assert sum(sizes) - plan.samples < g * batch  # ⌊N/G⌋ per worker, cut to whole batches: fewer than G·B left


@pytest.mark.parametrize("planner", [plan_epoch, plan_exact])
def test_workers_follow_one_seeded_shard_order_that_changes_with_the_epoch(planner):
    sizes = [10] * 12
    orders = {e: _shard_order(planner(sizes, 2, 2, 3, seed=7, epoch=e)) for e in range(3)}
    for order in orders.values():  # contiguous: a shard's pieces are adjacent, shards in one order
        assert [s for s, _ in itertools.groupby(order)] == list(dict.fromkeys(order))
    assert orders[0] == _shard_order(planner(sizes, 2, 2, 3, seed=7, epoch=0))
    assert len({tuple(dict.fromkeys(o)) for o in orders.values()}) == 3


class _Stream(PlannedStream):
    def __init__(self, planner, sizes, world):
        self.planner = planner
        super().__init__(sizes, ["d" * 64], batch_size=4, seed=1, shuffle_buffer=8, rank=0, world_size=world)


@pytest.mark.parametrize("world,workers", [(1, 0), (2, 3), (3, 2)])
def test_every_rank_and_worker_share_adds_up_to_the_epoch(world, workers):
    sizes = [7, 11, 0, 23, 5]
    for planner in (plan_epoch, plan_exact):
        streams = [_Stream(planner, sizes, world) for _ in range(world)]
        for r, ds in enumerate(streams):
            ds.rank = r
            ds.set_epoch(2)
        nw = max(workers, 1)
        shares = [ds.share(w, nw, "shuffle") for ds in streams for w in range(nw)]
        assert sorted(s.worker for s in shares) == list(range(world * nw))
        assert sum(b - a for s in shares for _, a, b in s.ranges) == streams[0].epoch_samples(workers)
        assert {s.batches * nw for s in shares} == {streams[0].batches_per_epoch(workers)}
        assert len({s.rng.integers(1 << 62) for s in shares}) == len(shares)  # one shuffle stream per worker


def test_a_resumed_share_skips_the_consumed_batches_of_the_plan_worker_it_plays():
    ds = _Stream(plan_exact, [40], world=1)
    ds.set_epoch(0, skip_batches=5)
    shares = [ds.share(w, 3, "shuffle") for w in range(3)]
    assert [(s.worker, s.skip) for s in shares] == [(2, 1), (0, 2), (1, 2)]  # batches 0..4 came from plan workers 0,1,2,0,1
    fresh = _Stream(plan_exact, [40], world=1)
    assert [s.ranges for s in shares] == [fresh.share(w, 3, "shuffle").ranges for w in (2, 0, 1)]
    assert np.array_equal(shares[0].rng.integers(1 << 30, size=4), fresh.share(2, 3, "shuffle").rng.integers(1 << 30, size=4))


def test_the_position_set_epoch_writes_is_one_array_and_pickling_leaves_the_loaders_behind():
    import pickle

    ds = _Stream(plan_exact, [40], world=1)
    ds.set_epoch(3, skip_batches=7)
    assert (ds.epoch, ds.skip_batches) == (3, 7) and ds._position.tolist() == [3, 7]
    ds._loaders = {(2, False): object()}  # what stream.loader keeps: DataLoaders, never sent to a worker
    copy = pickle.loads(pickle.dumps(ds))
    assert (copy.epoch, copy.skip_batches) == (3, 7) and not hasattr(copy, "_loaders") and copy.verified_slot(0, 0) is None
