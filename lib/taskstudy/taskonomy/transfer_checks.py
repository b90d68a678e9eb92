"""Chapter 03's checks of Step II's protocol (Zamir et al. 2018, Sec. 3.2, calibrated here): the readouts'
training curves and where they stopped, the corrupting sources' two views of a query, and the readout's capacity
chosen on val loss among narrower, wider and the paper's neck + decoder readouts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from taskstudy.engine.store import Store
from taskstudy.nn.models import Encoder
from taskstudy.nn.train import log_rows
from taskstudy.taskonomy.features import CORRUPTING, VERSION, cache_features, query_kind, view_name
from taskstudy.taskonomy.task_networks import study_tasks, task_networks
from taskstudy.taskonomy.transfer import (
    SCRATCH,
    build_readout,
    protocol,
    readout_key,
    run_readouts,
    score_table,
    scratch_key,
    sources_key,
)

if TYPE_CHECKING:
    from taskstudy.engine.params import StudyParams


def training_logs(params: StudyParams, plan: dict[str, list[tuple[str, ...]]],
                  with_scratch: bool = True) -> pd.DataFrame:
    """Training and validation loss against steps of every readout in `plan` (and scratch network): tidy
    (target, sources, kind, epoch, step, split, loss, best)."""
    store = Store.for_params(params)
    rows = []

    def add(target: str, name: str, kind: str, log: dict[str, Any]) -> None:
        rows.extend({"target": target, "sources": name, "kind": kind, **row} for row in log_rows(log))

    for target, sets in plan.items():
        for s in sets:
            r = store.load("readout", readout_key(params, target, s), VERSION)
            add(target, sources_key(s), "readout", r["log"])
        if with_scratch:
            r = store.load("scratch", scratch_key(params, target), VERSION)
            if r is not None:
                add(target, SCRATCH, "scratch", r["log"])
    return pd.DataFrame(rows)


#: The targets on which chapter 03 chooses each corrupting encoder's view (a 3D, a 2D and a semantic one).
VIEW_TARGETS = ("normals", "edge2d", "segment_semantic")


def view_comparison(params: StudyParams, targets: Sequence[str] | str = VIEW_TARGETS) -> pd.DataFrame:
    """Both views of the corrupting sources' encoders (issue 17, queries; issue 38, item 5): for inpainting and
    denoising, the first-order readout on the plain query and on the query corrupted as in the encoder's training
    (`transfers.corrupted_view`) for every target of `targets`, each trained and stopped like every readout. One
    row per (source, target): both mean val losses (what chooses the view, `view_choice`) and the test win rate of
    the corrupted view over the plain one (ties half) with its 95% bootstrap interval (what judges it).
    attrs["computed"]: readouts trained now."""
    from taskstudy.taskonomy import evaluate

    tasks = study_tasks(params.common)
    sources = [s for s in CORRUPTING if s in tasks]
    targets = [t for t in ([targets] if isinstance(targets, str) else targets) if t in tasks]
    if not sources or not targets:
        return pd.DataFrame()
    runs = {v: params.with_overrides(f"transfers.corrupted_view={v}") for v in ("plain", "corrupted")}
    plan = {t: [(s,) for s in sources if s != t] for t in targets}
    tables, computed = {}, 0
    for view, Q in runs.items():
        task_networks(Q, sources)
        cache_features(Q, sources, tuple(sorted({query_kind(t) for t in targets})))
        computed += len(run_readouts(Q, plan, set(), f"view {view}"))
        tables[view] = {split: score_table(Q, plan, with_baselines=False, split=split) for split in ("val", "test")}
    test = pd.concat([tables[v]["test"].assign(sources=tables[v]["test"].sources + "@" + v) for v in runs])
    pairs = [(t, f"{s}@corrupted", f"{s}@plain") for t, sets in plan.items() for (s,) in sets]
    ci = evaluate.win_rate_intervals(test, pairs, seed=params.common.seed).set_index(["target", "sources"])
    val_loss = {v: -tables[v]["val"].groupby(["target", "sources"])["score"].mean() for v in runs}
    rows = []
    for t, sets in plan.items():
        for (s,) in sets:
            val = {v: float(val_loss[v][(t, s)]) for v in runs}
            r = ci.loc[(t, f"{s}@corrupted")]
            rows.append({"source": s, "target": t, "val loss, plain": val["plain"],
                         "val loss, corrupted": val["corrupted"],
                         "change (val)": val["corrupted"] / val["plain"] - 1,
                         "corrupted beats plain (test)": r["rate"], "lo": r["lo"], "hi": r["hi"]})
    out = pd.DataFrame(rows).set_index(["source", "target"])
    out.attrs["computed"] = computed  # readouts trained now (the rest were in the store)
    return out


def view_choice(params: StudyParams, views: pd.DataFrame) -> pd.DataFrame:
    """Each corrupting encoder's view as val chooses it (`view_comparison`): the view with the lower mean val loss
    on more of the targets (a tie: the mean relative change decides), beside the profile's view
    (`transfers.corrupted_view`) and the test win rate of the chosen view over the other, averaged over the targets
    (the judge, not the chooser)."""
    rows = []
    for s, g in views.groupby(level="source", sort=False):
        wins = int((g["change (val)"] < 0).sum())
        mean_change = float(g["change (val)"].mean())
        chosen = ("corrupted" if wins * 2 > len(g) or (wins * 2 == len(g) and mean_change < 0) else "plain")
        rate = float(g["corrupted beats plain (test)"].mean())
        rows.append({"source": s, "targets": len(g), "corrupted lower on val": wins,
                     "mean change (val)": mean_change, "val chooses": chosen, "profile's view": view_name(params, s),
                     "chosen view wins (test)": rate if chosen == "corrupted" else 1 - rate})
    out = pd.DataFrame(rows).set_index("source")
    out["profile follows val"] = out["val chooses"] == out["profile's view"]
    return out


def view_finding(choice: pd.DataFrame) -> str:
    """Chapter 03's sentence on the views, per encoder, from `view_choice`."""
    if choice.empty:
        return "The dictionary has no corrupting encoder."
    parts = []
    for s, r in choice.iterrows():
        chosen, profile = r["val chooses"], r["profile's view"]
        lower = r["corrupted lower on val"] if chosen == "corrupted" else r["targets"] - r["corrupted lower on val"]
        follows = ("the profile reads it so" if r["profile follows val"]
                   else f"but the profile reads the {profile} view (`transfers.corrupted_view`)")
        parts.append(f"{s}: the {chosen} view has the lower val loss on {lower} of {r['targets']} targets (the "
                     f"corrupted view's mean change {r['mean change (val)']:+.1%}), {follows}; on test the {chosen} "
                     f"view wins on {r['chosen view wins (test)']:.2f} of the images")
    return "Chosen on val, per encoder: " + "; ".join(parts) + "."


#: Readouts measured against the default in chapter 03's capacity check: name -> params overrides.
CAPACITY_VARIANTS = {"width 8": ["transfers.readout_width=8"], "width 32": ["transfers.readout_width=32"],
                     "neck + decoder": ["transfers.readout=decoder"]}


def capacity_comparison(params: StudyParams, targets: Sequence[str] = ("normals", "depth_zbuffer", "edge2d"),
                        sources: Sequence[str] = ("autoencoding",)) -> pd.DataFrame:
    """Readout capacity chosen on val loss (issue 17): on a sample of first-order pairs (targets x sources of the
    dictionary), the profile's readout beside CAPACITY_VARIANTS (narrower, wider, and the paper's neck + full task
    decoder), each trained and early-stopped like every readout. One row per pair and readout: mean val loss, that
    loss relative to the best readout of the pair, parameters, training epochs and seconds, and whether it is the
    profile's readout (a variant equal to it is not trained twice). attrs["computed"]: readouts trained now."""

    tasks = study_tasks(params.common)
    plan = {t: [(s,) for s in sources if s in tasks] for t in targets if t in tasks}
    plan = {t: v for t, v in plan.items() if v}
    if not plan:
        return pd.DataFrame()
    cfg = params.section("transfers")
    name = "neck + decoder" if cfg.readout == "decoder" else f"width {cfg.readout_width}"
    t0, s0 = next((t, v[0]) for t, v in plan.items())
    runs = {name: params}
    for n, ov in CAPACITY_VARIANTS.items():
        Q = params.with_overrides(*ov)
        if readout_key(Q, t0, s0) != readout_key(params, t0, s0):  # a variant that is the profile's own: skipped
            runs[n] = Q
    store = Store.for_params(params)
    used = sorted({s for v in plan.values() for (s,) in v})
    task_networks(params, used)  # the variants change only the readout: one set of encoders and features
    cache_features(params, used, tuple(sorted({query_kind(t) for t in plan})))
    rows, computed = [], 0
    for variant, Q in runs.items():
        computed += len(run_readouts(Q, plan, set(), f"readout {variant}"))
        for t, sets in plan.items():
            for src in sets:
                saved = store.load("readout", readout_key(Q, t, src), VERSION)
                log = saved["log"]
                rows.append({"target": t, "source": sources_key(src), "readout": variant, "profile's": Q is params,
                             "val loss": float(-np.mean(saved["val_scores"])), "epochs": len(log["val_loss"]),
                             "train s": saved["wall_s"], "parameters": readout_parameters(Q, t, src)})
    out = pd.DataFrame(rows)
    out["vs best"] = out["val loss"] / out.groupby(["target", "source"])["val loss"].transform("min")
    out.attrs["computed"] = computed  # readouts trained now (the rest were in the store)
    return out


def capacity_summary(table: pd.DataFrame) -> pd.DataFrame:
    """capacity_comparison per readout, best first: pairs, median and worst val loss relative to each pair's best,
    parameters (median), epochs run (median), training seconds summed over the sample, and whether it is the
    profile's readout."""
    if table.empty:
        return pd.DataFrame()
    out = table.groupby("readout").agg(**{
        "pairs": ("vs best", "size"), "median vs best": ("vs best", "median"), "worst vs best": ("vs best", "max"),
        "parameters": ("parameters", "median"), "epochs": ("epochs", "median"), "train s": ("train s", "sum"),
        "profile's": ("profile's", "first")})
    return out.sort_values(["median vs best", "train s"])


def readout_parameters(params: StudyParams, target: str, sources: tuple[str, ...]) -> int:
    """Trainable parameters of the readout the profile builds for `sources` -> `target`."""
    net_cfg = params.section("task_networks")
    net = build_readout(protocol(params), target, len(sources) * Encoder(net_cfg.width, net_cfg.depth).out_channels)
    return sum(p.numel() for p in net.parameters())


def calibration_summary(logs: pd.DataFrame, ceilings: dict[str, int]) -> pd.DataFrame:
    """Per kind of network (readout, scratch) in a training_logs table: how many, how many stopped early, the kept
    epoch (median, 90th percentile, max) against the epoch ceiling, how many ran to the ceiling, and of those how
    many kept their last epoch (still improving when the schedule ended; the others ran out their patience's
    last epochs at the ceiling after their best epoch)."""
    runs = logs.groupby(["kind", "target", "sources"]).agg(ran=("epoch", "max"))
    kept = logs[logs.best & (logs.split == "val")].set_index(["kind", "target", "sources"])["epoch"]
    runs["kept"] = kept
    rows = []
    for kind, g in runs.groupby(level="kind"):
        cap = ceilings[kind]
        rows.append({"kind": kind, "networks": len(g), "epoch ceiling": cap,
                     "stopped early": int((g.ran < cap).sum()), "kept epoch (median)": float(g.kept.median()),
                     "kept epoch (90%)": float(g.kept.quantile(0.9)), "kept epoch (max)": int(g.kept.max()),
                     "reached the ceiling": int((g.ran >= cap).sum()),
                     "best at the ceiling": int(((g.ran >= cap) & (g.kept >= g.ran)).sum())})
    return pd.DataFrame(rows).set_index("kind")
