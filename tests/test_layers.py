"""Layer transfer (Yosinski et al. 2014): copying exactly the first n layers, frozen layers unchanged by training,
the experiment's rows at smoke size on the object world and on a CIFAR-100 fixture, the findings with their seed
bands, the paper's curves."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from taskstudy.engine.sections import Common
from taskstudy.engine.store import Store
from taskstudy.nn import layernet
from taskstudy.nn.train import TrainConfig
from taskstudy.yosinski import findings as yf
from taskstudy.yosinski import layers


def _realdata_fixtures():  # the CIFAR-100 fixture writer of tests/test_realdata.py, reused
    spec = importlib.util.spec_from_file_location("_realdata_fixtures", Path(__file__).with_name("test_realdata.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_write_cifar = _realdata_fixtures()._write_cifar

CFG = layernet.NetConfig(layers=6, width=4, hidden=8, image_size=16, n_classes=5)
SMOKE = dict(dataset="objects", cifar_root=None, n_images=96, n_val=96, n_test=96, image_size=16, layers=4,
             width=2, hidden=8, epochs=2, patience=1, batch_size=32, lr=0.003, seeds=2)


def _net(seed: int) -> layernet.LayerNet:
    torch.manual_seed(seed)
    return layernet.LayerNet(CFG)


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def _common(workers: int = 0) -> Common:
    return Common(seed=0, workers=workers)


def test_net_has_L_layers_classifier_last() -> None:
    net = _net(0)
    assert len(net.layers) == CFG.layers
    assert isinstance(net.layers[-1], torch.nn.Linear) and net.layers[-1].out_features == CFG.n_classes
    assert net(torch.zeros(2, 3, 16, 16)).shape == (2, CFG.n_classes)


@pytest.mark.parametrize("n", [1, 3, 5])
def test_copy_first_layers_copies_exactly_n(n: int) -> None:
    src, dst = _net(0), _net(1)
    copy_first_layers = layernet.copy_first_layers
    copy_first_layers(src, dst, n, freeze=True)
    for i in range(CFG.layers):
        assert _same(src.layers[i], dst.layers[i]) == (i < n), f"layer {i + 1} after copying n={n}"
        assert all(p.requires_grad == (i >= n) for p in dst.layers[i].parameters())
    with pytest.raises(ValueError):
        copy_first_layers(src, dst, CFG.layers, freeze=False)  # the classifier is never copied


def test_frozen_layers_unchanged_fine_tuned_layers_change() -> None:
    g = torch.Generator().manual_seed(0)
    data = {"xtr": torch.randn(64, 3, 16, 16, generator=g), "ytr": torch.randint(0, 5, (64,), generator=g),
            "xva": torch.randn(32, 3, 16, 16, generator=g), "yva": torch.randint(0, 5, (32,), generator=g),
            "xte": torch.randn(32, 3, 16, 16, generator=g), "yte": torch.randint(0, 5, (32,), generator=g)}
    cfg = TrainConfig(epochs=2, batch_size=16, lr=1e-2, seed=0)
    base, n = _net(0), 3
    frozen, tuned = _net(1), _net(1)
    layernet.copy_first_layers(base, frozen, n, freeze=True)
    layernet.copy_first_layers(base, tuned, n, freeze=False)
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    layernet.train_net(frozen, n, data, cfg, patience=5)
    layernet.train_net(tuned, 0, data, cfg, patience=5)
    after = frozen.state_dict()
    for i in range(CFG.layers):
        names = [k for k in before if k.startswith(f"layers.{i}.")]
        unchanged = all(torch.equal(before[k], after[k]) for k in names)
        assert unchanged == (i < n), f"layer {i + 1}: frozen={i < n} but unchanged={unchanged}"
        assert _same(base.layers[i], frozen.layers[i]) == (i < n)
    assert not _same(base.layers[0], tuned.layers[0])  # fine-tuned: the copied layers train too


def _check_rows(df: pd.DataFrame, values: dict) -> None:
    counts = layers.unit_counts(values)
    assert len(df) == counts["total"]
    assert set(df.columns) == {"split_kind", "treatment", "n", "seed", "top1", "cpu_s", "epochs_run", "best_epoch",
                               "train_loss", "val_loss"}
    assert (df.epochs_run <= values["epochs"]).all() and (df.best_epoch <= df.epochs_run).all()
    assert (df.val_loss.map(len) == df.epochs_run).all()
    assert set(df.treatment) == set(layers.BASES) | set(layers.TREATMENTS)
    assert sorted(df[df.treatment == "AnB"].n.unique()) == list(range(1, values["layers"]))
    assert df.top1.between(0, 1).all()


def test_smoke_run_rows_and_reuse(tmp_path: Path) -> None:
    store = Store(tmp_path / "results")
    df = layers.run_layer_transfer(SMOKE, _common(), store)
    _check_rows(df, SMOKE)
    f = yf.findings(df, yf.load_paper_curves())
    assert list(f.index) == list(yf.FINDINGS)
    assert (f.seeds == SMOKE["seeds"]).all() and (f.lo <= f.study).all() and (f.study <= f.hi).all()
    assert set(f.verdict) <= {"reproduced", "not reproduced", "within noise"}
    curves = yf.calibration_curves(df)
    assert set(curves.split) == {"train", "val"}
    assert curves.groupby(["split_kind", "treatment", "seed"]).best.any().all()
    computed = store.stats["computed"]
    again = layers.run_layer_transfer(SMOKE, _common(), Store(tmp_path / "results"))
    pd.testing.assert_frame_equal(df, again)  # every unit read back from the store
    assert store.stats["computed"] == computed


def test_cifar_fixture(tmp_path: Path) -> None:
    _write_cifar(tmp_path / "cifar", per_class=2)
    values = {**SMOKE, "dataset": "cifar100", "cifar_root": str(tmp_path / "cifar"), "n_images": 150,
              "n_val": 50, "n_test": 200, "image_size": 32}
    key = layers.data_key(values, _common())
    sets = layers.halves(key, tmp_path / "results")
    assert sets["dissimilar"]["A"]["n_classes"] + sets["dissimilar"]["B"]["n_classes"] == 100
    assert sets["similar"]["A"]["xtr"].shape[1:] == (3, 32, 32)
    n_val = sum(len(sets["similar"][h]["yva"]) for h in "AB")
    assert n_val == 50 and sum(len(sets["similar"][h]["ytr"]) for h in "AB") == 150  # disjoint draws
    store = Store(tmp_path / "results")
    bases, transfers = layers.make_units(values, _common(), store.root)
    unit = next(u for u in transfers if (u.split_kind, u.treatment, u.n) == ("dissimilar", "AnB", 2))
    base = unit.base("baseA")
    r = layers.run_unit(base)
    store.save("layer_bases", base.key(), r["state"], layers.VERSION, fmt="pt")
    assert 0 <= layers.run_unit(unit)["top1"] <= 1  # natural -> man-made transfer, base read from the store
    with pytest.raises(ValueError, match="cifar_root"):
        layers.data_key({**values, "cifar_root": None}, _common())


def test_paper_curves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paper = yf.load_paper_curves()
    assert {"similar", "dissimilar"} == set(paper.split_kind)
    f = yf.findings(paper, paper)
    sign = {k: s for k, (_, s) in yf.FINDINGS.items()}
    # the paper's own means show its findings, the co-adaptation dip included (a single "seed": no band)
    assert all(f.loc[k, "paper"] * s > 0 for k, s in sign.items()), f.paper
    assert (f.verdict == "within noise").all()  # one run is no seed band
    monkeypatch.setenv("TASKSTUDY_REFERENCE", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="TASKSTUDY_REFERENCE"):
        yf.load_paper_curves()


def test_seed_band_verdicts() -> None:
    """A paired difference that is consistent across seeds is a verdict; one that flips sign is within noise."""
    rows = []
    for seed, (dip, boost) in enumerate([(-0.10, 0.05), (-0.12, -0.04), (-0.11, 0.03)]):
        for kind in layers.SPLIT_KINDS:
            rows.append({"split_kind": kind, "treatment": "baseB", "n": 0, "seed": seed, "top1": 0.5})
            for n in range(1, 7):
                rows += [{"split_kind": kind, "treatment": "BnB", "n": n, "seed": seed,
                          "top1": 0.5 + (dip if 3 <= n <= 4 else 0)},
                         {"split_kind": kind, "treatment": "AnB+", "n": n, "seed": seed, "top1": 0.5 + boost},
                         {"split_kind": kind, "treatment": "AnB", "n": n, "seed": seed, "top1": 0.5 - 0.02 * n},
                         {"split_kind": kind, "treatment": "random", "n": n, "seed": seed, "top1": 0.1}]
    f = yf.findings(pd.DataFrame(rows))
    assert f.loc["coadaptation", "verdict"] == "reproduced"
    assert f.loc["anbplus_boost", "verdict"] == "within noise"
    assert f.loc["random_worse", "verdict"] == "reproduced"
    assert f.loc["dissimilar_worse", "verdict"] == "within noise"  # the same curves on both splits: no gap


def test_paper_beside_carries_the_band_verdicts() -> None:
    paper = yf.load_paper_curves()
    f = yf.findings(paper, paper)
    table = yf.paper_beside(f, "a setting")
    assert set(table.finding) == set(yf.FINDINGS) | {"setting"}
    verdicts = table.set_index("finding").verdict
    assert verdicts["setting"] == "setting" and (verdicts.drop("setting") == f.verdict.reindex(
        verdicts.drop("setting").index)).all()


def test_selffer_gain_is_paired_by_seed() -> None:
    rows = [{"split_kind": "similar", "treatment": t, "n": n, "seed": s, "top1": v + 0.1 * s}
            for s in range(3) for t, n, v in (("baseB", 0, 0.5), ("BnB+", 2, 0.53), ("BnB+", 4, 0.55))]
    g = yf.selffer_gain(pd.DataFrame(rows))
    assert g["gain"] == pytest.approx(0.04) and g["lo"] == pytest.approx(0.04)  # the seed offset cancels


def test_schedule_verdict_reads_the_paired_gain():
    from taskstudy.yosinski import layers

    idx = pd.MultiIndex.from_tuples([("random", "baseA"), ("random", "baseB"), ("dissimilar", "baseA"),
                                     ("dissimilar", "baseB")], names=["split", "net"])
    study = [1.00, 1.20, 0.90, 1.10]

    def check(longer: list[float]) -> pd.DataFrame:
        cols = pd.MultiIndex.from_tuples([("best val loss", "longer (8 epochs)"),
                                          ("best val loss", "study (4 epochs)")])
        return pd.DataFrame(np.c_[longer, study], index=idx, columns=cols)

    runs = pd.DataFrame({"treatment": ["baseA"] * 2, "split_kind": ["random"] * 2, "seed": [0, 1],
                         "val_loss": [[1.0, 0.9], [1.2, 1.1]], "best_epoch": [2, 2]})
    better = layers.schedule_verdict(check([s - 0.05 for s in study]), runs)  # 0.05 lower on every net
    assert better["gain"] == pytest.approx(0.05) and better["gain_lo"] > 0 and not better["converged"]
    assert better["gain"] < better["spread"]  # below the seed spread: the old rule called it converged
    jitter = [-0.05, 0.05, -0.04, 0.04]
    noisy = layers.schedule_verdict(check([s + d for s, d in zip(study, jitter, strict=True)]), runs)
    assert noisy["gain_lo"] <= 0 <= noisy["gain_hi"] and noisy["converged"]
