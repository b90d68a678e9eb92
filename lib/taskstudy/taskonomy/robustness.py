"""Is the taxonomy's structure real? Taskonomy (Zamir et al. 2018) Sec. 5.2 and Sec. 5.1.

Sec. 5.2 ("Universality of the structure"): Steps I-IV rerun under changes of the experiment (seed, split,
task-network and readout architecture, amount of transfer data, the task dictionary), each compared with the
main run. Here every variation is a list of dotted params overrides (the `-p section.key=value` of
`taskstudy run`) on top of a *base*: the study restricted to `robustness.tasks` at first order, trained exactly
like the main study (same splits, same calibrated training; `robustness.n_train` / `robustness.epochs` shorten
Step I only when set, and the chapter then says so). Affinities come from the val split, as in the main study.
Every unit
goes through the same store as the main study, so what a variation shares with the base (Step I networks when
only the readout changes, every readout when only the dictionary shrinks) is read, not trained. Agreement of
two runs: Spearman's rho of their affinity matrices (per target and pooled over cells) and the Jaccard overlap
of the source sets the BIP chooses per budget; the spread between training seeds is the yardstick.

Sec. 5.1 (ImageNet, MIT Places): every dictionary encoder of the main run linearly probed on an outside
classification set (the object world, taskstudy.world.objects, or a real CIFAR-100 copy), the encoders ranked by probe
accuracy and that ranking compared with the taxonomy's ranking of the same sources for a classification target
(Spearman's rho, permutation p-value).
"""

from __future__ import annotations

import itertools
import json
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import stats

from taskstudy.engine.codehash import computation_hash
from taskstudy.engine.parallel import run_units
from taskstudy.engine.paths import find_root
from taskstudy.engine.store import Store
from taskstudy.nn.train import predict
from taskstudy.taskonomy import ahp, features, taxonomy, transfer, tree
from taskstudy.taskonomy import task_networks as step1
from taskstudy.uncertainty import permutation_p
from taskstudy.world import data, objects
from taskstudy.world.scenes import OBJECT_CLASSES

if TYPE_CHECKING:
    from taskstudy.engine.params import StudyParams

VERSION = "1"
BASE = "base"


# --- the variations as params overrides -------------------------------------------------------------------------

def base_overrides(P: StudyParams) -> list[str]:
    """The overrides that turn the main study into the reduced base every variation starts from: the task
    subset, first order only, the shorter Step I, and the scene splits pinned to the main run's seed (so a
    `common.seed` override varies training alone)."""
    cfg = P.section("robustness")
    out = [f"common.tasks={json.dumps(list(cfg.tasks))}", f"common.split_seed={data.split_seed(P.common)}",
           "transfers.max_order=1"]
    if cfg.n_train is not None:
        out.append(f"common.n_train={cfg.n_train}")
    if cfg.epochs is not None:
        out.append(f"task_networks.epochs={cfg.epochs}")
    return out


def variations(P: StudyParams) -> dict[str, list[str]]:
    """Name -> overrides on top of the base: the base itself, one run per extra training seed (the yardstick),
    then the section's `variations`."""
    cfg = P.section("robustness")
    out: dict[str, list[str]] = {BASE: []}
    out.update({f"seed {s}": [f"common.seed={s}"] for s in cfg.seeds})
    out.update({name: list(ov) for name, ov in cfg.variations.items()})
    return out


def variation_params(P: StudyParams, overrides: Iterable[str]) -> Any:
    """The validated params of one variation: P's profile and overrides, then the base's, then the variation's."""
    return P.with_overrides(*base_overrides(P), *overrides)


# --- one run of Steps I-IV ----------------------------------------------------------------------------------------

@dataclass
class Run:
    """Steps I-IV of one variation: its first-order affinity matrix, the BIP's source set per budget, and how many
    units (task networks and readouts) were trained now against read from the store."""

    name: str
    overrides: list[str]
    affinity: pd.DataFrame
    policies: dict[int, frozenset[str]]
    trained: int
    reused: int
    wall_s: float
    tasks: list[str] = field(default_factory=list)


def policies(affinity: pd.DataFrame, budgets: Iterable[int]) -> dict[int, frozenset[str]]:
    """Step IV at first order: the supervised source set the BIP chooses for each budget (budgets above the
    number of candidate sources are skipped)."""
    cands = taxonomy.transfers_from_affinity(affinity)
    n = len({s for tup in cands.sources for s in tup})
    return {b: frozenset(taxonomy.solve_taxonomy(cands, b, max_order=1).sources) for b in budgets if b <= n}


def run_variation(P: StudyParams, name: str, overrides: Sequence[str], budgets: Iterable[int]) -> Run:
    """Steps I-II through the store (trained only where missing), Step III (AHP, first order), Step IV (BIP)."""
    start = time.perf_counter()
    Q = variation_params(P, overrides)
    nets = step1.task_networks(Q)
    step2 = transfer.transfers(Q, baselines=False)
    affinity = ahp.affinity_matrix(step2.results["val_scores"], max_order=1, exclude=ahp.BASELINES)
    total = len(nets.results) + sum(len(v) for v in step2.results["plan"].values())
    trained = len(nets.computed) + len(step2.computed)
    return Run(name, list(overrides), affinity, policies(affinity, budgets), trained, total - trained,
               time.perf_counter() - start, step1.study_tasks(Q.common))


def run_variations(P: StudyParams, plan: Mapping[str, Sequence[str]], budgets: Iterable[int]) -> dict[str, Run]:
    """Every variation of `plan` (name -> overrides), side by side on a Dask cluster: one client thread per
    variation submits its units to the same workers, so that one run's last task network does not leave a worker
    idle while the next run waits for it. Units two variations share are claimed once (the store's locks); the
    runs and their numbers are those of running them one after another. In-process (no workers): one by one."""
    budgets = list(budgets)
    if not (P.common.workers or P.common.cluster.address):
        return {name: run_variation(P, name, ov, budgets) for name, ov in plan.items()}
    with ThreadPoolExecutor(max_workers=len(plan)) as pool:
        futures = {name: pool.submit(run_variation, P, name, ov, budgets) for name, ov in plan.items()}
        return {name: f.result() for name, f in futures.items()}


def main_run(P: StudyParams, budgets: Iterable[int]) -> Run:
    """The main study (chapters 02-05, the profile without the base's overrides) as a Run: its first-order
    affinity matrix and policies, from the store."""
    start = time.perf_counter()
    affinity = ahp.affinity_matrix(transfer.transfers(P).results["val_scores"], max_order=1, exclude=ahp.BASELINES)
    return Run("main study", [], affinity, policies(affinity, budgets), 0, 0, time.perf_counter() - start,
               step1.study_tasks(P.common))


# --- agreement of two runs --------------------------------------------------------------------------------------

def _shared(a: pd.DataFrame, b: pd.DataFrame) -> tuple[list[str], list[str]]:
    rows = [t for t in a.index if t in b.index]
    cols = [c for c in a.columns if c in b.columns]
    return rows, cols


def _rank_agreement(a: pd.DataFrame, b: pd.DataFrame, self_entry: bool = False) -> pd.DataFrame:
    """tree.rank_agreement on two matrices of the study's own names (a target's own entry, its own network `full`,
    scratch and the random encoder left out unless `self_entry`): per-target rows, then "pooled". A constant row
    has no ranking: NaN, without scipy's warning."""
    names = {n: n for n in [*a.index, *a.columns, *b.index, *b.columns]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=stats.ConstantInputWarning)
        return tree.rank_agreement(a, b, name_map=names, self_entry=self_entry)


def per_target_rho(a: pd.DataFrame, b: pd.DataFrame, self_entry: bool = False) -> pd.Series:
    """Spearman's rho of two affinity matrices' rows over the source sets both have, per shared target, the
    target's own entry and the baselines left out (`tree.rank_agreement`; NaN where fewer than 3 sources are rated
    by both or a row is constant)."""
    out = _rank_agreement(a, b, self_entry)
    out = out[out["target"] != "pooled"]
    return pd.Series(out["rho"].to_numpy(float), index=out["target"].to_list(), dtype=float, name="rho")


def pooled_rho(a: pd.DataFrame, b: pd.DataFrame, self_entry: bool = False) -> float:
    """Spearman's rho over every (target, source set) cell both matrices rate (rows sum to 1, so cells of
    different targets are on one scale), own entries and baselines left out as in `per_target_rho`."""
    out = _rank_agreement(a, b, self_entry)
    return float(out.loc[out["target"] == "pooled", "rho"].iloc[0])


def jaccard(a: Iterable[str], b: Iterable[str]) -> float:
    """|A & B| / |A | B|; two empty sets agree (1.0)."""
    a, b = set(a), set(b)
    return 1.0 if not a | b else len(a & b) / len(a | b)


def source_overlap(a: Mapping[int, Iterable[str]], b: Mapping[int, Iterable[str]]) -> pd.Series:
    """Jaccard overlap of the chosen source sets at every budget both runs solved."""
    return pd.Series({k: jaccard(a[k], b[k]) for k in sorted(set(a) & set(b))}, dtype=float, name="jaccard")


def compare(ref: Run, run: Run, budgets: Iterable[int]) -> dict[str, Any]:
    """Agreement of `run` with `ref` on what both contain. When `run` studies fewer tasks, `ref`'s BIP is solved
    again on its affinity restricted to them, so both choose from the same candidates."""
    rows, cols = _shared(ref.affinity, run.affinity)
    same = len(rows) == len(ref.affinity) and len(cols) == len(ref.affinity.columns)
    ref_pol = ref.policies if same else policies(ref.affinity.loc[rows, cols], budgets)
    rho = per_target_rho(ref.affinity, run.affinity)
    jac = source_overlap(ref_pol, run.policies)
    return {"pooled rho": pooled_rho(ref.affinity, run.affinity), "median target rho": float(rho.median()),
            "lowest target rho": float(rho.min()), "lowest target": rho.idxmin() if rho.notna().any() else None,
            "mean jaccard": float(jac.mean()), "targets": len(rows), "sources": len(cols),
            **{f"jaccard@{k}": v for k, v in jac.items()}}


def seed_spread(runs: Mapping[str, Run], budgets: Iterable[int]) -> pd.DataFrame:
    """The yardstick: `compare` for every pair of training-seed runs (the base and each `seed s` run)."""
    names = [n for n in runs if n == BASE or n.startswith("seed ")]
    rows = [{"pair": f"{a} vs {b}", **compare(runs[a], runs[b], budgets)} for a, b in itertools.combinations(names, 2)]
    return pd.DataFrame(rows)


#: Issue 17's stability targets for the first-order affinities across training seeds.
STABILITY_TARGETS = {"pooled rho": 0.9, "median target rho": 0.85, "lowest target rho": 0.5}


def seed_rho_per_target(runs: Mapping[str, Run]) -> pd.DataFrame:
    """Spearman's rho of every target's first-order affinities between every two training-seed runs: targets x
    seed pairs, with the pooled rho as a last row."""
    names = [n for n in runs if n == BASE or n.startswith("seed ")]
    cols = {}
    for a, b in itertools.combinations(names, 2):
        rho = per_target_rho(runs[a].affinity, runs[b].affinity)
        rho.loc["pooled"] = pooled_rho(runs[a].affinity, runs[b].affinity)
        cols[f"{a} vs {b}"] = rho
    return pd.DataFrame(cols)


def stability_targets(spread: pd.DataFrame, targets: Mapping[str, float] | None = None) -> pd.DataFrame:
    """The seed-to-seed spread against the stability targets: per measure, its worst value over seed pairs, the
    target and whether it is met."""
    targets = STABILITY_TARGETS if targets is None else targets
    rows = [{"measure": m, "worst seed pair": float(spread[m].min()), "mean": float(spread[m].mean()),
             "target": t, "met": bool(spread[m].min() >= t)} for m, t in targets.items()]
    return pd.DataFrame(rows).set_index("measure")


def stability_table(runs: Mapping[str, Run], budgets: Iterable[int]) -> pd.DataFrame:
    """One row per variation: its agreement with the base, and whether each measure lies within the
    seed-to-seed spread (at or above the lowest value any two seeds reach)."""
    budgets = list(budgets)
    spread = seed_spread(runs, budgets)
    rows = []
    for name, run in runs.items():
        if name == BASE:
            continue
        row = {"variation": name, "overrides": " ".join(run.overrides), **compare(runs[BASE], run, budgets),
               "trained": run.trained, "reused": run.reused, "wall_s": run.wall_s}
        for m in ("pooled rho", "mean jaccard"):
            row[f"{m} stable"] = bool(row[m] >= spread[m].min() - 1e-12) if len(spread) else None
        rows.append(row)
    return pd.DataFrame(rows).set_index("variation")


# --- Sec. 5.1: an outside dataset -----------------------------------------------------------------------------

def outside_key(P: StudyParams) -> dict[str, Any]:
    """What determines the outside classification set."""
    cfg = P.section("robustness")
    key: dict[str, Any] = {"dataset": cfg.outside_dataset, "n_train": cfg.outside_train, "n_test": cfg.outside_test,
                           "image_size": P.common.image_size, "seed": P.common.seed}
    if cfg.outside_dataset == "objects":
        key["label"] = cfg.outside_label
    else:
        key["cifar_root"] = str(_cifar_root(cfg.cifar_root))
    return {**key, "code": computation_hash(outside_data)}


def _cifar_root(root: str | None) -> Path:
    if not root:
        raise ValueError("robustness.outside_dataset is 'cifar100' but robustness.cifar_root is not set")
    p = Path(root)
    return p if p.is_absolute() else find_root() / p


def outside_name(P: StudyParams) -> str:
    """A reader's name for the outside set."""
    cfg = P.section("robustness")
    if cfg.outside_dataset == "cifar100":
        return "CIFAR-100 (100 fine classes)"
    return ("object world (8 shapes)" if cfg.outside_label == "shape"
            else f"object world ({objects.num_classes()} classes)")


def outside_data(P: StudyParams) -> dict[str, torch.Tensor | int]:
    """The outside set as tensors: x_train, y_train, x_test, y_test (images in [0, 1] at common.image_size) and
    n_classes. Object world: `outside_label` is 'shape' (8 classes, the object-classification analogue) or
    'class' (its 48 classes). CIFAR-100: a seeded subset of each official split, fine labels
    (image_sets.raw_images, the layer-transfer chapter's loader)."""
    cfg, size = P.section("robustness"), P.common.image_size
    if cfg.outside_dataset == "objects":
        store = Store.for_params(P)
        tr = data.object_split(store, "train", cfg.outside_train, P.common.seed, size)
        te = data.object_split(store, "test", cfg.outside_test, P.common.seed, size)
        col = "shape" if cfg.outside_label == "shape" else "label"
        n_classes = len(OBJECT_CLASSES) if col == "shape" else objects.num_classes()
        return {"x_train": torch.from_numpy(tr["rgb"]), "y_train": torch.from_numpy(tr[col]),
                "x_test": torch.from_numpy(te["rgb"]), "y_test": torch.from_numpy(te[col]), "n_classes": n_classes}
    from taskstudy.world.image_sets import raw_images

    key = {"dataset": "cifar100", "cifar_root": str(_cifar_root(cfg.cifar_root)), "n_images": cfg.outside_train,
           "n_val": 0, "n_test": cfg.outside_test, "seed": P.common.seed, "image_size": size}
    xtr, ytr, _, _, xte, yte, n_classes = raw_images(key, str(Store.for_params(P).root))
    return {"x_train": torch.from_numpy(xtr), "y_train": torch.from_numpy(ytr), "x_test": torch.from_numpy(xte),
            "y_test": torch.from_numpy(yte), "n_classes": n_classes}


def pooled_features(encoder: torch.nn.Module, x: torch.Tensor, grid: int) -> torch.Tensor:
    """The frozen representation E_s(I) average-pooled to grid x grid cells and flattened: the probe's input."""
    z = predict(encoder, x)
    return F.adaptive_avg_pool2d(z.float(), grid).flatten(1)


def probe_accuracy(encoder: torch.nn.Module, d: Mapping[str, Any], grid: int, weight_decay: float,
                   steps: int) -> float:
    """Linear probe (multinomial logistic regression, nn.heads.fit_head) on the pooled frozen features; test
    accuracy."""
    from taskstudy.nn.heads import fit_head

    f_train = pooled_features(encoder, d["x_train"], grid)
    head = fit_head(f_train, d["y_train"], int(d["n_classes"]), weight_decay, steps)
    with torch.no_grad():
        pred = head(pooled_features(encoder, d["x_test"], grid)).argmax(1)
    return float((pred == d["y_test"]).float().mean())


def _probe_code() -> str:
    """What a probe's accuracy is computed by (this module's probe and nn.heads.fit_head)."""
    return computation_hash(_probe_unit)


def _probe_key(P: StudyParams, source: str) -> dict[str, Any]:
    cfg = P.section("robustness")
    return {"encoder": features.encoder_key(P, source), "outside": outside_key(P), "grid": cfg.probe_grid,
            "weight_decay": cfg.probe_wd, "steps": cfg.probe_steps, "code": _probe_code()}


def _probe_unit(unit: tuple[Any, str]) -> float:
    """One encoder's outside probe accuracy (a unit of parallel.run_units: the outside set is read from the store)."""
    P, source = unit
    cfg = P.section("robustness")
    return probe_accuracy(features.frozen_encoder(P, source), outside_data(P), cfg.probe_grid, cfg.probe_wd,
                          cfg.probe_steps)


def outside_ranking(P: StudyParams, sources: Sequence[str]) -> pd.DataFrame:
    """Sec. 5.1: probe accuracy on the outside set of every source's frozen Step I encoder (and the random
    encoder), one store entry per encoder, the missing ones fitted on the cluster's workers. Columns: source,
    accuracy, rank (1 = best), computed (now or read)."""
    store = Store.for_params(P)
    names = [*sources, transfer.RANDOM]
    if not all(store.exists("outside_probe", _probe_key(P, s), VERSION) for s in names):
        outside_data(P)  # rendered (or read) once here, so the workers read it from the store
    ran = run_units(_probe_unit, [(P, s) for s in names], store=store, kind="outside_probe",
                    key=lambda u: _probe_key(P, u[1]), version=VERSION, common=P.common, desc="outside probes",
                    save=lambda u, acc: store.save("outside_probe", _probe_key(P, u[1]), {"accuracy": acc}, VERSION,
                                                   fmt="json"))
    found, here = {s: store.load("outside_probe", _probe_key(P, s), VERSION) for s in names}, {u[1] for u in ran}
    out = pd.DataFrame([{"source": s, "accuracy": float(found[s]["accuracy"]), "computed": s in here}
                        for s in names])
    out["rank"] = out["accuracy"].rank(ascending=False, method="average")
    return out


def outside_finding(ranking: pd.DataFrame, name: str) -> str:
    """Sec. 5.1's outside probes in a sentence (`outside_ranking`'s table, the outside set's `name`): the task
    encoders' accuracy range, the random encoder's accuracy and how many task encoders beat it, how many probes
    were fitted in this run."""
    acc = ranking.set_index("source")["accuracy"]
    rnd, tasks_acc = float(acc[transfer.RANDOM]), acc.drop(transfer.RANDOM)
    fitted = int(ranking["computed"].sum())
    return (f"Outside set: {name}. Probe accuracy from {tasks_acc.min():.2f} ({tasks_acc.idxmin()}) to "
            f"{tasks_acc.max():.2f} ({tasks_acc.idxmax()}); the random encoder {rnd:.2f}, beaten by "
            f"{int((tasks_acc > rnd).sum())} of {len(tasks_acc)} task encoders. {fitted} probes fitted now, "
            f"{len(ranking) - fitted} read from the store.")


def ranking_agreement(accuracy: pd.Series, affinity_row: pd.Series, n_perm: int, seed: int) -> dict[str, float]:
    """Spearman's rho between the outside ranking (probe accuracy per source) and the taxonomy's ranking of the
    same sources for one target (its affinity row, named by the row's name), with a two-sided permutation p-value.
    The target's own encoder and the baselines are left out, as in every rank agreement (`tree.rank_agreement`)."""
    skip = {affinity_row.name, *ahp.BASELINES}
    shared = [s for s in accuracy.index if s in affinity_row.index and s not in skip and pd.notna(affinity_row[s])]
    x, y = accuracy[shared].to_numpy(float), affinity_row[shared].to_numpy(float)
    rho = float(stats.spearmanr(x, y).statistic)
    return {"rho": rho, "p": permutation_p(x, y, "spearman", n_perm, seed), "n": len(shared)}


def critical_rho(n: int, alpha: float = 0.05) -> float:
    """The smallest |Spearman's rho| over n pairs that is significant at `alpha` (two-sided), by the usual t
    approximation t = rho sqrt((n - 2) / (1 - rho^2))."""
    t = stats.t.ppf(1 - alpha / 2, n - 2)
    return float(t / np.sqrt(n - 2 + t * t))


def outside_beside(agree: pd.DataFrame, targets: Sequence[str]) -> pd.DataFrame:
    """Sec. 5.1 beside the study: per outside target, the paper's claim (a significant positive Spearman's rho
    between the affinities and the outside set's accuracies; ImageNet for objects, MIT Places for scenes) and the
    study's rho, p and number of sources (`outside_agreement` rows), with the verdict: "reproduced" for a positive
    rho at p <= 0.05, else which way it fails."""
    claim, outside = "significant positive Spearman's rho", {"class_object": "ImageNet", "class_scene": "MIT Places"}
    rows = []
    for t in targets:
        r = agree.loc[t]
        sign = "positive" if r["rho"] > 0 else "negative"
        verdict = ("reproduced" if r["rho"] > 0 and r["p"] <= 0.05 else
                   f"not reproduced: significantly {sign}" if r["p"] <= 0.05 else
                   f"not reproduced: {sign} but not significant at 0.05")
        rows.append({"target": t, "paper (Sec. 5.1)": claim, "outside set (paper)": outside.get(t, "-"),
                     "study rho": round(float(r["rho"]), 2), "study p": round(float(r["p"]), 3),
                     "sources": int(r["n"]), "verdict": verdict})
    return pd.DataFrame(rows).set_index("target")


def variation_verdicts(table: pd.DataFrame, spread: pd.DataFrame) -> pd.DataFrame:
    """Each variation (the `stability_table` rows that are not seeds) against the seed-to-seed spread: its pooled
    rho and mean Jaccard with the base, whether each lies within the seeds' range ("stable"), the verdict, its least
    stable target, and whether it agrees with the base better than any two seeds agree with each other."""
    v = table.drop(index=[n for n in table.index if n.startswith("seed ")]).copy()
    measures = ("pooled rho", "mean jaccard")
    v["verdict"] = ["within the seed spread on both measures" if all(r[f"{m} stable"] for m in measures) else
                    "below the seed spread on " + " and ".join(m for m in measures if not r[f"{m} stable"])
                    for _, r in v.iterrows()]
    v["above every seed pair"] = v["pooled rho"] > spread["pooled rho"].max()
    return v[["overrides", "pooled rho", "mean jaccard", "verdict", "lowest target", "lowest target rho",
              "above every seed pair"]]
