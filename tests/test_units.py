"""One runner for units of work (issue 19, item 2): parallel.run_units, and every unit kind through it."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import copy_study

from taskstudy.engine import parallel
from taskstudy.engine.params import load
from taskstudy.engine.store import Store
from taskstudy.standley import training
from taskstudy.task2vec import task2vec
from taskstudy.taskonomy import novel, outside, step2, task_networks
from taskstudy.world import learnability
from taskstudy.yosinski import layers

COMMON = SimpleNamespace(workers=0, cluster=SimpleNamespace(address=None))


def _runner(store: Store, calls: list[int], units: list[int]) -> list[int]:
    def slow_square(u: int) -> int:
        calls.append(u)
        time.sleep(0.05)
        return u * u

    return parallel.run_units(slow_square, units, store=store, kind="square", key=lambda u: {"u": u}, version="1",
                              common=COMMON, save=lambda u, r: store.save("square", {"u": u}, {"r": r}, "1"))


def test_two_concurrent_runners_compute_each_unit_once(tmp_path: Path):
    store, calls = Store(tmp_path), []
    ran: list[list[int]] = [[], []]
    threads = [threading.Thread(target=lambda i=i: ran[i].extend(_runner(store, calls, list(range(8)))))
               for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(calls) == list(range(8))  # each unit once, by one runner or the other
    assert sorted(ran[0] + ran[1]) == list(range(8))
    assert [store.load("square", {"u": u}, "1")["r"] for u in range(8)] == [u * u for u in range(8)]
    assert _runner(store, calls, list(range(8))) == [] and len(calls) == 8  # all done: nothing runs


def test_left_runs_only_what_is_missing(tmp_path: Path):
    store, seen = Store(tmp_path), []
    store.save("part", {"u": 1}, {"r": 1}, "1")

    def left(u: tuple[int, ...]) -> tuple[int, ...] | None:
        rest = tuple(x for x in u if not store.exists("part", {"u": x}, "1"))
        return rest or None

    def save(u: tuple[int, ...], r: list[int]) -> None:
        for x in u:
            store.save("part", {"u": x}, {"r": x}, "1")

    ran = parallel.run_units(lambda u: seen.append(u) or list(u), [(0, 1, 2), (1,)], store=store, kind="parts",
                             key=lambda u: {"u": list(u)}, version="1", common=COMMON, left=left, save=save)
    assert seen == [(0, 2)] and ran == [(0, 2)]



def _beside(store: Store, common: object, fn, block) -> None:
    with parallel.units_beside(fn, [3], store=store, kind="cube", key=lambda u: {"u": u}, version="1",
                               common=common, save=lambda u, r: store.save("cube", {"u": u}, {"r": r}, "1")):
        block()


def test_units_beside_in_process_run_after_the_block_and_not_after_an_error(tmp_path: Path):
    store, order = Store(tmp_path), []
    with pytest.raises(RuntimeError):
        _beside(store, COMMON, lambda u: order.append("unit") or u ** 3, _fail)
    assert order == [] and not store.exists("cube", {"u": 3}, "1")
    assert store.lock("cube", {"u": 3}, "1").acquire(timeout=0)  # no claim left behind
    before = parallel.COMPUTED.get("cube", 0)
    _beside(store, COMMON, lambda u: order.append("unit") or u ** 3, lambda: order.append("block"))
    assert order == ["block", "unit"] and store.load("cube", {"u": 3}, "1")["r"] == 27
    assert parallel.COMPUTED["cube"] == before + 1
    _beside(store, COMMON, lambda u: order.append("again") or 0, lambda: None)  # stored: nothing runs
    assert "again" not in order


def _fail() -> None:
    raise RuntimeError("the block failed")


@pytest.mark.slow
def test_units_beside_run_on_the_workers_during_the_block(tmp_path: Path):
    """On a cluster the unit starts on entry: the block sees it running (its marker file) before it ends."""
    store, marker = Store(tmp_path / "store"), tmp_path / "started"
    common = SimpleNamespace(workers=1, cluster=SimpleNamespace(address=None))

    def cube(u: int) -> int:
        from pathlib import Path as P

        P(marker).write_text("on a worker")
        return u ** 3

    def wait_for_the_unit() -> None:
        deadline = time.time() + 120
        while not marker.exists() and time.time() < deadline:
            time.sleep(0.1)
        assert marker.exists() and not store.exists("cube", {"u": 3}, "1")  # running beside, not yet saved

    try:
        _beside(store, common, cube, wait_for_the_unit)
    finally:
        parallel.close_clients()
    assert store.load("cube", {"u": 3}, "1")["r"] == 27

FOUR = "common.tasks=[autoencoding, normals, segment_semantic, class_scene]"
SMALLER = ["task_grouping.tasks=[depth_zbuffer, normals, edge2d]", "task_grouping.seeds=1", "transfers.max_order=1"]
# every unit kind, in an order in which each finds what it reads: (kind counted by run_units, its call)
KINDS = [
    ("task_network", lambda P: task_networks.task_networks(P)),
    ("transfer_unit", lambda P: step2.transfers(P, targets=["normals"])),
    ("layer_units", lambda P: layers.run_layer_transfer(P.values("layer_transfer"), P.common, Store.for_params(P))),
    ("learnability", lambda P: learnability.learnability_table(P, [96], tasks=learnability.TASKS[:1])),
    ("mtl_network", lambda P: training.train_all(P)),
    ("task2vec_embedding", lambda P: task2vec.embeddings(P)),
    ("task2vec_expert_errors", lambda P: task2vec.expert_errors(P)),
    ("outside_probe", lambda P: outside.outside_ranking(P, ["autoencoding"])),
    ("novel_readout", lambda P: novel.imagenet_scores(P, ["normals"])),
]


@pytest.mark.slow
def test_every_unit_kind_computes_each_unit_once_under_two_concurrent_runs(tmp_path, monkeypatch):
    """Two runs side by side (threads of one process, each claiming through the store's file locks as two
    processes do) of every unit kind's step: no entry is written twice, and each kind computed at least one unit
    (features too: one unit per source)."""
    monkeypatch.setenv("TASKSTUDY_ROOT", str(copy_study(tmp_path)))
    P = load(str(tmp_path / "params/smoke.yaml"), [FOUR, *SMALLER])
    saved: list[tuple[str, str]] = []
    real_save = Store.save

    def counting_save(self, name, params, obj, version="1", fmt=None):
        saved.append((name, self.key(name, params, version)))
        return real_save(self, name, params, obj, version, fmt)

    monkeypatch.setattr(Store, "save", counting_save)
    for kind, step in KINDS:
        before = dict(parallel.COMPUTED)
        errors: list[BaseException] = []

        def run(step=step, errors=errors) -> None:
            try:
                step(P)
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=run) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, (kind, errors)
        assert parallel.COMPUTED.get(kind, 0) > before.get(kind, 0), kind
    # the score table each run assembles from the units' entries is not a unit: both runs write the same table
    twice = [k for k, n in Counter(saved).items() if n > 1 and k[0] not in ("transfer_scores",)]
    assert not twice, twice
    assert parallel.COMPUTED.get("features", 0) >= 4
