"""Chapter 10's tables over seeds and settings (Standley et al., ICML 2020): what the trained networks say.

Every choice (the best grouping, all-separate's sizes, the pairwise prediction, the early-stopping approximation,
TAG's lookahead grouping) is made on the networks' `val` losses and judged on their `test` losses, once per seed;
each comparison is then the seed mean with its Student-t seed band (`uncertainty.seed_interval`) and a verdict
against it (`uncertainty.sign_verdict`: reproduced / not reproduced / within noise).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from taskstudy.nn import train
from taskstudy.reference import beside, standley_best_grouping
from taskstudy.standley import grouping, lookahead
from taskstudy.standley.training import GroupingRun, GroupingStudy
from taskstudy.uncertainty import seed_interval, sign_verdict


# --------------------------------------------------------------------------------------------------- one run
def pairwise(run: GroupingRun, which: str = "losses") -> pd.DataFrame:
    """The paper's Tables 2-4: relative change of a task's loss when trained with another (positive = helps);
    `which`: losses (test) or val_losses."""
    single, pair = {}, {}
    for net, cost, r in zip(run.networks, run.costs, run.results, strict=True):
        if len(net) == 1 and cost == 1.0:
            single[net[0]] = r[which][net[0]]
        elif len(net) == 2:
            pair[net] = r[which]
    return grouping.pairwise_table(single, pair)


def budget_table(run: GroupingRun, budgets: Sequence[float] | None = None, relative: bool = False) -> pd.DataFrame:
    """Per budget: the best grouping chosen on the val losses, all-in-one and all-separate at equal budget, and
    the groupings of the higher-order (pairwise) approximation, of early stopping (val losses after
    `early_epoch`) and of TAG (lookahead affinities, full-size networks, whole budgets), each scored on the test
    losses (relative to each task's single-task network with `relative`). Needs every candidate network."""
    test, val = run.losses(relative=relative), run.losses("val_losses", relative=relative)
    budgets = list(budgets) if budgets is not None else grouping.default_budgets(len(run.tasks))
    est = grouping.estimate_higher_order(val, run.networks)
    table = grouping.grouping_table(test, run.costs, run.names, budgets, predicted=est, select=val)
    early = run.losses("early_losses", relative=relative)
    for name, choose in (("early", lambda b: grouping.best_grouping(early, run.costs, b, run.tasks)),
                         ("tag", lambda b: lookahead.tag_grouping(run.lookahead, run.networks, run.costs, b,
                                                                 run.tasks))):
        names, vals = [], []
        for b in budgets:
            try:
                if name == "tag" and (run.lookahead is None or b != int(b)):
                    raise grouping.GroupingError("TAG chooses whole networks")
                chosen = choose(b)
                names.append(" | ".join(run.names[i] for i in chosen))
                vals.append(grouping.total_loss(test, chosen, run.tasks))
            except grouping.GroupingError:
                names.append(None)
                vals.append(np.nan)
        table[name], table[f"{name}_loss"] = names, vals
    return table


def compare(table: pd.DataFrame, tol: float = 1e-9) -> pd.DataFrame:
    """Per budget: does the best grouping strictly beat all-in-one and all-separate on test (NaN where that
    baseline does not fit the budget), by how much (% of the baseline's total loss), and how much worse (% of the
    best) the groupings of the higher-order, early-stopping and TAG approximations are."""
    out = pd.DataFrame({"budget": table["budget"], "best": table["best"]})
    for base in ("all_in_one", "all_separate"):
        ref = table[f"{base}_loss"]
        out[f"beats {base.replace('_', '-')}"] = (table["best_loss"] < ref * (1 - tol)).where(ref.notna())
        out[f"gain vs {base.replace('_', '-')} %"] = 100 * (ref - table["best_loss"]) / ref
    for approx in ("predicted", "early", "tag"):
        out[f"{approx} excess %"] = 100 * (table[f"{approx}_loss"] - table["best_loss"]) / table["best_loss"]
    return out


def cost_table(run: GroupingRun) -> pd.DataFrame:
    """Per network (Table 1's 1/k networks included): tasks, size, width, charged cost, measured encoder cost (MACs
    / full-size MACs), parameters, epochs run, training wall and CPU time."""
    full = next(r["encoder_macs"] for r in run.results if r["width"] == run.config.width)
    rows = [(name, len(net), "full" if cost == 1.0 else "half", cost, r)
            for name, net, cost, r in zip(run.names, run.networks, run.costs, run.results, strict=True)]
    rows += [(f"{t} (1/{k})", 1, f"1/{k}", 1 / k, r) for k, per in (run.equal or {}).items() if k > 2
             for t, r in per.items()]
    return pd.DataFrame([{
        "network": name, "tasks": n, "size": size, "encoder width": r["width"], "cost (units)": cost,
        "measured encoder cost": r["encoder_macs"] / full, "parameters": r["n_params"],
        "epochs run": len(r["log"]["train_loss"]), "train s": r["wall_s"], "train CPU s": r["cpu_s"],
    } for name, n, size, cost, r in rows])


def serving_networks(run: GroupingRun, chosen: Sequence[int], which: str = "val_losses") -> dict[str, int]:
    """Task -> the chosen network that serves it: the one with its lowest loss on `which` (val: as the choice)."""
    return {t: min((i for i in chosen if t in run.results[i][which]), key=lambda i: run.results[i][which][t])
            for t in run.tasks}


def equal_budget(run: GroupingRun) -> pd.DataFrame:
    """Table 1's analogue: per group size k (2..N), the mean over k-task networks and their tasks of the relative
    test-loss change against single-task networks, (L_single - L_group) / L_single (positive: the multi-task
    network is better), first against full-size single-task networks (k times the budget), then against single-task
    networks of 1/k size (equal total budget; 1/2 is the half size)."""
    full = {t: r["losses"][t] for t, r in run.equal[1].items()}
    rows = []
    for k in range(2, len(run.tasks) + 1):
        small = {t: r["losses"][t] for t, r in run.equal.get(k, {}).items()}
        groups = [r["losses"] for net, r in zip(run.networks, run.results, strict=True) if len(net) == k]
        vs_full = [(full[t] - g[t]) / full[t] for g in groups for t in g]
        vs_small = [(small[t] - g[t]) / small[t] for g in groups for t in g] if small else [np.nan]
        rows.append({"tasks per network": k, "vs full-size single-task": float(np.mean(vs_full)),
                     "vs 1/k single-task (equal budget)": float(np.mean(vs_small))})
    return pd.DataFrame(rows).set_index("tasks per network")


# --------------------------------------------------------------------------------------------------- seeds
def band(values: Sequence[float], expected: int | None = None) -> dict[str, Any]:
    """Seed mean, Student-t band and (with `expected`, the sign the paper's finding predicts) the verdict."""
    mean, lo, hi = seed_interval(values)
    out = {"mean": mean, "lo": lo, "hi": hi, "seeds": int(np.isfinite(np.asarray(values, dtype=float)).sum())}
    if expected is not None:
        out["verdict"] = sign_verdict(lo, hi, expected)
    return out


def pairwise_band(runs: Sequence[GroupingRun]) -> pd.DataFrame:
    """Every ordered pair's pairwise gain over seeds: long rows (task, partner, mean, lo, hi, seeds, sign: helps /
    hurts / within noise)."""
    tables = [pairwise(r) for r in runs]
    rows = []
    for a in tables[0].index:
        for b in tables[0].columns:
            if a == b:
                continue
            row = {"task": a, "partner": b, **band([t.loc[a, b] for t in tables], +1)}
            row["sign"] = {"reproduced": "helps", "not reproduced": "hurts"}.get(row.pop("verdict"), "within noise")
            rows.append(row)
    return pd.DataFrame(rows)


def mean_pairwise(runs: Sequence[GroupingRun]) -> pd.DataFrame:
    """The seed mean of the pairwise tables (rows: the task, columns: its partner)."""
    return sum(pairwise(r) for r in runs) / len(runs)


def mean_lookahead(runs: Sequence[GroupingRun]) -> pd.DataFrame:
    """The seed mean of the all-tasks networks' lookahead affinity."""
    looks = [r.lookahead for r in runs if r.lookahead is not None]
    return sum(looks) / len(looks)


def lookahead_agreement(runs: Sequence[GroupingRun]) -> dict[str, Any]:
    """Per seed, Spearman's rho between the lookahead affinity and the pairwise gains over the ordered pairs, in
    the same direction (pairwise[a, b]: b helps a; lookahead[b, a]: a step on b helps a); `band` of the seeds' rhos
    with the per-seed values under `per_seed`."""
    rhos = []
    for r in runs:
        look, pairs = r.lookahead, pairwise(r)
        mask = ~np.eye(len(look), dtype=bool)
        helped = pairs.loc[look.index, look.columns].to_numpy().T[mask]
        rhos.append(float(pd.Series(look.to_numpy()[mask]).corr(pd.Series(helped), method="spearman")))
    return {**band(rhos), "per_seed": rhos, "pairs": int(mask.sum())}


def budget_tables(runs: Sequence[GroupingRun], budgets: Sequence[float] | None = None,
                  relative: bool = False) -> pd.DataFrame:
    """`budget_table` and `compare` of every seed, stacked (a `seed` column)."""
    out = []
    for r in runs:
        table = budget_table(r, budgets, relative)
        out.append(pd.concat([table, compare(table).drop(columns=["budget", "best"])], axis=1).assign(seed=r.seed))
    return pd.concat(out, ignore_index=True)


COMPARISONS = {  # column of budget_tables -> (what it says, the sign the paper's finding predicts)
    "gain vs all-in-one %": ("the best grouping beats all-in-one (% of its test loss)", +1),
    "gain vs all-separate %": ("the best grouping beats all-separate (% of its test loss)", +1),
    "predicted excess %": ("the pairwise prediction is worse than the best grouping (%)", +1),
    "early excess %": ("choosing after early stopping is worse than the best grouping (%)", +1),
    "tag excess %": ("TAG's lookahead grouping is worse than the best grouping (%)", +1),
}


def comparison_bands(tables: pd.DataFrame) -> pd.DataFrame:
    """Per budget and comparison (COMPARISONS): seed mean, band and verdict."""
    rows = []
    for b, part in tables.groupby("budget"):
        for col, (what, sign) in COMPARISONS.items():
            vals = part[col].to_numpy(dtype=float)
            if np.isfinite(vals).sum() >= 2:
                rows.append({"budget": b, "comparison": what, **band(vals, sign)})
    return pd.DataFrame(rows)


def grouping_stability(tables: pd.DataFrame) -> pd.DataFrame:
    """Per budget: the grouping each seed chooses on val, and how many seeds choose the most common one."""
    rows = []
    for b, part in tables.groupby("budget"):
        counts = part["best"].value_counts()
        rows.append({"budget": b, "most chosen": counts.index[0], "seeds choosing it": int(counts.iloc[0]),
                     "seeds": len(part), "distinct groupings": len(counts)})
    return pd.DataFrame(rows)


def equal_budget_bands(runs: Sequence[GroupingRun]) -> pd.DataFrame:
    """Table 1's analogue over seeds: per group size, each comparison's seed mean (in %), band and verdict (the
    paper: worse than full-size single-task networks, -1; better than 1/k ones from 3 tasks on, +1)."""
    tables = [equal_budget(r) for r in runs]
    rows = []
    for k in tables[0].index:
        for col, sign in (("vs full-size single-task", -1), ("vs 1/k single-task (equal budget)", +1)):
            rows.append({"tasks per network": k, "against": col,
                         **band([100 * t.loc[k, col] for t in tables], sign)})
    return pd.DataFrame(rows)


def calibration_rows(runs: Sequence[GroupingRun]) -> pd.DataFrame:
    """Training and validation loss against steps of every seed's single-task, pair and all-tasks networks (tidy
    rows of `train.log_rows` with network, tasks and seed), for the calibration figure."""
    rows = []
    for run in runs:
        for name, net, cost, r in zip(run.names, run.networks, run.costs, run.results, strict=True):
            if cost == 1.0 and len(net) in (1, 2, len(run.tasks)):
                kind = {1: "single-task", 2: "pair"}.get(len(net), f"{len(run.tasks)} tasks")
                rows += [{**row, "network": name, "kind": kind, "seed": run.seed} for row in train.log_rows(r["log"])]
    return pd.DataFrame(rows)


def convergence(runs: Sequence[GroupingRun]) -> dict[str, Any]:
    """How the candidate networks stopped: stopped early (patience), ran to the ceiling, median kept epoch, and
    the median relative change of the val loss over the last 3 epochs (`train.tail_change`)."""
    logs = [r["log"] for run in runs for r in run.results]
    early = sum(len(g["train_loss"]) < g["max_epochs"] for g in logs)
    tails = [t for t in (train.tail_change(g) for g in logs) if np.isfinite(t)]  # NaN: too few epochs to say
    return {"networks": len(logs), "stopped early": early, "at ceiling": len(logs) - early,
            "median kept epoch": float(np.median([g["best_epoch"] for g in logs])),
            "ceiling": logs[0]["max_epochs"],
            "median tail change %": 100 * float(np.median(tails)) if tails else float("nan")}


def predicted_choice(run: GroupingRun, budget: float) -> str | None:
    """The grouping the higher-order approximation picks among full-size networks from the val losses of the
    single-task and pair networks (all a `networks="pairs"` setting trains), by name; None where none fits."""
    nets = [net for net, c in zip(*grouping.candidate_networks(run.tasks), strict=True) if c == 1.0]
    known = {net: r["val_losses"] for net, c, r in zip(run.networks, run.costs, run.results, strict=True)
             if c == 1.0 and len(net) <= 2}
    val = [known[tuple(n)] if len(n) <= 2 else {} for n in nets]
    try:
        chosen = grouping.best_grouping(grouping.estimate_higher_order(val, nets), [1.0] * len(nets), budget,
                                        run.tasks)
    except grouping.GroupingError:
        return None
    return " | ".join("+".join(nets[i]) for i in chosen)


def setting_table(study: GroupingStudy) -> pd.DataFrame:
    """Per setting: its values, the mean pairwise gain over ordered pairs (seed band), ordered pairs that help /
    hurt beyond their seed band, and the grouping of full-size networks the pairwise prediction picks with about
    half as many networks as tasks (per seed; the most common)."""
    rows = []
    for name, runs in study.runs.items():
        c = runs[0].config
        pb = pairwise_band(runs)
        means = [pairwise(r).stack().mean() for r in runs]
        mid = float(-(-len(c.tasks) // 2))  # whole networks: a setting trains no half-size ones
        picks = [predicted_choice(r, mid) for r in runs]
        common = pd.Series(picks).value_counts()
        rows.append({"setting": name, "encoder width": c.width, "decoder width": c.decoder_width,
                     "train images": c.train_images, "epochs (ceiling)": c.epochs, "seeds": len(runs),
                     **{f"mean pairwise gain % {k}": 100 * v for k, v in band(means).items() if k != "seeds"},
                     "pairs helping": int((pb["sign"] == "helps").sum()),
                     "pairs hurting": int((pb["sign"] == "hurts").sum()), "ordered pairs": len(pb),
                     f"predicted grouping, {mid:g} networks": common.index[0] if len(common) else None,
                     "seeds predicting it": int(common.iloc[0]) if len(common) else 0})
    return pd.DataFrame(rows).set_index("setting")


# --------------------------------------------------------------------------------------------------- the paper
def _served_groups(serving: dict[str, Any], size: dict[Any, str]) -> str:
    nets: dict[Any, list[str]] = {}
    for t, i in serving.items():
        nets.setdefault(i, []).append(t)
    return " | ".join("+".join(ts) + (" (x0.5)" if size[i] == "half" else "") for i, ts in nets.items())


def _versus_paper(run: GroupingRun, budget: float) -> tuple[str, int, int, int, int]:
    """One seed's grouping at `budget` (chosen on val) against the paper's: its description, task pairs together
    or apart as in the paper (of how many), tasks on a network of the paper's size (of how many)."""
    ref = standley_best_grouping()
    chosen = grouping.best_grouping(run.losses("val_losses"), run.costs, budget, run.tasks)
    serving = serving_networks(run, chosen)
    p_serves = ref[ref["serves"]].set_index("task")
    common = [t for t in run.tasks if t in p_serves.index]
    p_size = dict(zip(ref["network"], ref["size"], strict=False))
    s_size = {i: "full" if run.costs[i] == 1.0 else "half" for i in chosen}
    pairs_t = [(a, b) for k, a in enumerate(common) for b in common[k + 1:]]
    same = sum((p_serves.at[a, "network"] == p_serves.at[b, "network"]) == (serving[a] == serving[b])
               for a, b in pairs_t)
    sizes = sum(p_size[p_serves.at[t, "network"]] == s_size[serving[t]] for t in common)
    return _served_groups({t: serving[t] for t in common}, s_size), same, len(pairs_t), sizes, len(common)


def paper_beside(study: GroupingStudy, tables: pd.DataFrame | None = None) -> pd.DataFrame:
    """Standley et al.'s findings (reference/claims.csv, reference/standley2020_best_grouping.csv) beside the
    control setting's seeds: the best grouping at the paper's budget (chosen on val, per seed), normals alone, the
    best grouping against all-in-one and all-separate, k-task networks against full-size single-task networks and
    against 1/k single-task ones at equal budget, each with its seed band and verdict (one verdict for all k when
    they agree, else "within noise"). `tables`: `budget_tables(study.control)` when the caller has it."""
    runs = study.control
    ref = standley_best_grouping()
    budget = float(ref["budget"].iloc[0])
    seen = [_versus_paper(r, budget) for r in runs]
    desc = pd.Series([s[0] for s in seen]).value_counts()
    exact = sum(s[1] == s[2] and s[3] == s[4] for s in seen)
    study_rows: dict[str, tuple[str, bool | None, str]] = {
        "best_grouping": (f"at {budget:g} units the seeds choose {desc.index[0]} ({desc.iloc[0]} of {len(runs)}); "
                          f"task pairs together or apart as in the paper: "
                          f"{', '.join(f'{s[1]}/{s[2]}' for s in seen)}; tasks on a network of the paper's size: "
                          f"{', '.join(f'{s[3]}/{s[4]}' for s in seen)} (per seed)",
                          exact == len(runs), "reproduced" if exact == len(runs) else
                          ("not reproduced" if exact == 0 else "within noise")),
    }
    pairs = [pairwise(r) for r in runs]
    if "normals" in pairs[0].index:
        own = band([p.loc["normals"].drop("normals").max() * 100 for p in pairs], -1)
        given = band([p["normals"].drop("normals").mean() * 100 for p in pairs], +1)
        v = own["verdict"] if own["verdict"] == given["verdict"] else "within noise"
        study_rows["normals_alone"] = (
            f"normals' best partner changes their loss by {own['mean']:+.1f}% [{own['lo']:+.1f}, {own['hi']:+.1f}]; "
            f"normals change their partners' losses by {given['mean']:+.1f}% [{given['lo']:+.1f}, {given['hi']:+.1f}] "
            f"on average", v == "reproduced", v)
    else:
        study_rows["normals_alone"] = ("not measured (normals are not among the tasks)", None, "not tested")
    tables = budget_tables(runs, [budget]) if tables is None else tables[tables["budget"] == budget]
    parts = [band(tables[c].to_numpy(dtype=float), +1) for c in ("gain vs all-in-one %", "gain vs all-separate %")]
    v = parts[0]["verdict"] if parts[0]["verdict"] == parts[1]["verdict"] else "within noise"
    study_rows["beats_baselines"] = (
        f"at {budget:g} units the best grouping's test loss is {parts[0]['mean']:+.1f}% [{parts[0]['lo']:+.1f}, "
        f"{parts[0]['hi']:+.1f}] below all-in-one's and {parts[1]['mean']:+.1f}% [{parts[1]['lo']:+.1f}, "
        f"{parts[1]['hi']:+.1f}] below all-separate's", v == "reproduced", v)
    n = len(runs[0].tasks)
    eq = equal_budget_bands(runs).set_index(["tasks per network", "against"])
    for finding, against, ks in (("mtl_vs_single", "vs full-size single-task", range(2, n + 1)),
                                 ("equal_budget", "vs 1/k single-task (equal budget)", range(3, n + 1))):
        rows = [eq.loc[(k, against)] for k in ks]
        verdicts = {r["verdict"] for r in rows}
        v = verdicts.pop() if len(verdicts) == 1 else "within noise"
        study_rows[finding] = (f"k-task networks {against} (relative test loss, + = multi-task better): " + "; ".join(
            f"k = {k}: {r['mean']:+.1f}% [{r['lo']:+.1f}, {r['hi']:+.1f}]" for k, r in zip(ks, rows, strict=True)),
            v == "reproduced", v)
    frame = beside("10_task_grouping", "paper (Standley et al. 2020)",
                   {k: (s, a) for k, (s, a, _) in study_rows.items()})
    frame["verdict"] = [study_rows[f][2] if f in study_rows else "not tested" for f in frame["finding"]]
    return frame


def schedule_verdict(check: pd.DataFrame, runs: Sequence[GroupingRun]) -> dict[str, Any]:
    """Read `training.schedule_check` on the paired differences: per network (the same seed, data and
    initialisation under both schedules) the longer schedule's gain in best val loss, relative to the study's (> 0:
    it found lower losses); its mean with the Student-t 95% interval over the networks (gain_lo, gain_hi, in %);
    `converged` when that interval holds 0 or lies below it (no gain beyond noise). `table`: the gain per network
    beside the seeds' relative spread of its best val loss (standard deviation over mean), for scale only: a gain
    from the same seed is not judged against the spread between seeds."""
    study_col, long_col = check.columns[:2]
    names = runs[0].names
    best = {name: [min(r.results[names.index(name)]["log"]["val_loss"]) for r in runs] for name in check.index}
    table = pd.DataFrame({
        "gain %": 100 * (check[study_col] - check[long_col]) / check[study_col],
        "seed spread %": [100 * float(np.std(best[n], ddof=1) / np.mean(best[n])) for n in check.index]})
    gain, lo, hi = seed_interval(table["gain %"].to_numpy(float))
    return {"table": table, "gain": gain, "gain_lo": lo, "gain_hi": hi, "n": len(table),
            "converged": bool(lo <= 0)}


__all__ = ["COMPARISONS", "band", "budget_table", "budget_tables", "calibration_rows",
           "comparison_bands", "compare", "convergence", "cost_table", "equal_budget", "equal_budget_bands",
           "grouping_stability", "lookahead_agreement", "mean_lookahead", "mean_pairwise", "pairwise",
           "pairwise_band", "paper_beside", "predicted_choice", "schedule_verdict", "serving_networks",
           "setting_table"]
