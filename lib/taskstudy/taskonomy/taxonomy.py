"""Step IV of Taskonomy (Zamir et al. 2018, Sec. 3.4): the global taxonomy as a Boolean Integer Program.

Variables: x_e for every candidate transfer e = (sources tuple -> target) and y_s for every source task s.
The paper's BIP (Eq. 1-2 of Sec. 3.4):

    maximise   sum_e r_{t(e)} p_e x_e                      (p_e: transfer quality, r_t: target importance)
    subject to x_e <= y_s             for every s in sources(e)   (a transfer needs all its sources)
               sum_{e -> t} x_e = 1   for every target t          (exactly one incoming transfer per target)
               sum_s l_s y_s <= gamma                             (supervision budget over source costs l_s)

The linking constraints are written aggregated per target, sum_{e -> t, s in e} x_e <= y_s: with exactly one
incoming transfer per target this admits the same integer solutions and a tighter LP relaxation, with T*S rows
instead of one per (transfer, source). A supervised target is served by its own fully supervised network, the
paper's `self` transfer: the affinity column `full` becomes the candidate with sources (t,) for target t (it
needs t itself supervised). The readout on t's own frozen encoder, also sources (t,), is then not a candidate:
with t supervised its full network is at hand, and the readout only approximates it (it stays in the affinity
matrix as a column). Without a `full` column the readout is the (t,) candidate, as before.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd


class TaxonomyError(ValueError):
    """An infeasible taxonomy problem: a budget too small for any policy, or a target with no candidate."""


@dataclass(frozen=True)
class Taxonomy:
    """A transfer policy: the supervised source tasks, each target's source set, and the BIP objective."""

    sources: frozenset[str]
    policy: dict[str, tuple[str, ...]] = field(hash=False)
    objective: float
    budget: float
    max_order: int | None
    solver: str
    served: dict[str, str] = field(default_factory=dict, hash=False)  # target -> the score-table name serving it

    def candidate(self, target: str) -> str:
        """The score-table name of what serves `target`: `full` for its own network, else the source set."""
        return self.served.get(target, "+".join(self.policy[target]))


def as_tuple(sources: str | Iterable[str]) -> tuple[str, ...]:
    """A source set as a sorted tuple; accepts a tuple/list or a "+"-joined string."""
    names = sources.split("+") if isinstance(sources, str) else list(sources)
    return tuple(sorted(names))


SELF = "full"  # the affinity column of a target's own network (taskstudy.taskonomy.ahp.SELF)


def transfers_from_affinity(affinity: pd.DataFrame) -> pd.DataFrame:
    """Long table (target, sources tuple, quality, candidate) from an affinity matrix (targets x "+"-joined
    source sets, and `full`), NaN entries dropped. `candidate` is the score-table name of the transfer; the
    column `full` of target t becomes sources (t,), replacing t's own-encoder readout (see the module doc)."""
    long = affinity.stack().dropna().reset_index()
    long.columns = ["target", "candidate", "quality"]
    long["candidate"] = long["candidate"].astype(str)
    has_self = set(long.loc[long["candidate"] == SELF, "target"])
    own_readout = (long["candidate"] == long["target"]) & long["target"].isin(has_self)
    long = long[~own_readout].reset_index(drop=True)
    long["sources"] = [(t,) if c == SELF else as_tuple(c) for t, c in zip(long["target"], long["candidate"],
                                                                          strict=True)]
    return long[["target", "sources", "quality", "candidate"]]


@dataclass
class _Problem:
    targets: list[str]
    sources: list[str]
    edges: list[tuple[str, tuple[str, ...]]]  # (target, sources)
    weight: np.ndarray  # r_t * p_e per edge
    cost: np.ndarray  # per source task
    names: list[str] = field(default_factory=list)  # the score-table name of each edge


def _prepare(transfers: pd.DataFrame, costs: Mapping[str, float] | None, importance: Mapping[str, float] | None,
             max_order: int | None, targets: Iterable[str] | None) -> _Problem:
    missing_cols = {"target", "sources", "quality"} - set(transfers.columns)
    if missing_cols:
        raise ValueError(f"transfers lacks column(s) {sorted(missing_cols)}")
    want = sorted(set(transfers["target"]) if targets is None else set(targets))
    df = transfers[["target", "sources", "quality"]].dropna()
    df = df.assign(sources=df["sources"].map(as_tuple))
    if "candidate" in transfers.columns:
        df = df.assign(candidate=transfers.loc[df.index, "candidate"].astype(str))
    else:
        df = df.assign(candidate=df["sources"].map("+".join))
    if max_order is not None:
        df = df[df["sources"].map(len) <= max_order]
    dup = df.duplicated(["target", "sources"])
    if dup.any():
        row = df[dup].iloc[0]
        raise ValueError(f"duplicate candidate transfer {row['sources']} -> {row['target']!r}")
    if importance is not None and targets is None:
        want = sorted(set(want) | set(importance))
    have = set(df["target"])
    lacking = [t for t in want if t not in have]
    if lacking:
        order = "" if max_order is None else f" of order <= {max_order}"
        raise TaxonomyError(f"target(s) {lacking} have no candidate transfer{order} (with a quality)")
    df = df[df["target"].isin(want)]
    sources = sorted({s for tup in df["sources"] for s in tup})
    if costs is None:
        cost = np.ones(len(sources))
    else:
        unknown = [s for s in sources if s not in costs]
        if unknown:
            raise ValueError(f"costs has no entry for source task(s) {unknown}")
        cost = np.array([float(costs[s]) for s in sources])
        if (cost < 0).any():
            raise ValueError("source costs must be non-negative")
    r = {t: 1.0 for t in want} if importance is None else {t: float(importance.get(t, 1.0)) for t in want}
    edges = list(zip(df["target"], df["sources"], strict=True))
    weight = np.array([r[t] * q for t, q in zip(df["target"], df["quality"].astype(float), strict=True)])
    return _Problem(want, sources, edges, weight, cost, list(df["candidate"]))


def _solve_pulp(pb: _Problem, budget: float, objective: str = "quality") -> tuple[str, np.ndarray]:
    import pulp

    sense = pulp.LpMaximize if objective == "quality" else pulp.LpMinimize
    prob = pulp.LpProblem("taxonomy", sense)
    new = getattr(prob, "add_variable", None) or pulp.LpVariable  # pulp >= 3.3 attaches variables to the model
    x = [new(f"x{i}", cat="Binary") for i in range(len(pb.edges))]
    y = {s: new(f"y{j}", cat="Binary") for j, s in enumerate(pb.sources)}
    cost_expr = pulp.LpAffineExpression([(y[s], c) for s, c in zip(pb.sources, pb.cost, strict=True)])
    if objective == "quality":
        prob += pulp.LpAffineExpression(list(zip(x, pb.weight.tolist(), strict=True)))
        prob += cost_expr <= budget, "budget"
    else:
        prob += cost_expr
    incoming: dict[str, list] = {t: [] for t in pb.targets}
    uses: dict[tuple[str, str], list] = {}
    for xi, (t, srcs) in zip(x, pb.edges, strict=True):
        incoming[t].append((xi, 1))
        for s in srcs:
            uses.setdefault((t, s), []).append((xi, 1))
    for terms in incoming.values():
        prob += pulp.LpAffineExpression(terms) == 1
    for (_, s), terms in uses.items():
        prob += pulp.LpAffineExpression(terms + [(y[s], -1)]) <= 0
    with warnings.catch_warnings():  # pulp 3.3 deprecates PULP_CBC_CMD, yet it is the bundled CBC
        warnings.simplefilter("ignore", DeprecationWarning)
        prob.solve(pulp.PULP_CBC_CMD(msg=False))
    status = pulp.LpStatus[prob.status]
    if status != "Optimal":
        return status, np.zeros(0)
    return status, np.array([round(v.value() or 0.0) for v in x])


def _solve_highs(pb: _Problem, budget: float, objective: str = "quality") -> tuple[str, np.ndarray]:
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix

    ne, ns = len(pb.edges), len(pb.sources)
    tix = {t: i for i, t in enumerate(pb.targets)}
    six = {s: j for j, s in enumerate(pb.sources)}
    # rows: one per target (== 1), one per (target, source) pair (<= 0), then the budget (<= gamma)
    rows, cols, vals = [], [], []
    pair_row: dict[tuple[str, str], int] = {}
    nt = len(pb.targets)
    for e, (t, srcs) in enumerate(pb.edges):
        rows.append(tix[t]), cols.append(e), vals.append(1.0)
        for s in srcs:
            r = pair_row.setdefault((t, s), nt + len(pair_row))
            rows.append(r), cols.append(e), vals.append(1.0)
    for (_, s), r in pair_row.items():
        rows.append(r), cols.append(ne + six[s]), vals.append(-1.0)
    nrow = nt + len(pair_row)
    lb = [1.0] * nt + [-np.inf] * len(pair_row)
    ub = [1.0] * nt + [0.0] * len(pair_row)
    if objective == "quality":
        for j in range(ns):
            rows.append(nrow), cols.append(ne + j), vals.append(float(pb.cost[j]))
        lb.append(-np.inf), ub.append(float(budget))
        nrow += 1
        c = np.concatenate([-pb.weight, np.zeros(ns)])
    else:
        c = np.concatenate([np.zeros(ne), pb.cost])
    A = coo_matrix((vals, (rows, cols)), shape=(nrow, ne + ns)).tocsr()
    res = milp(c, constraints=LinearConstraint(A, lb, ub), integrality=np.ones(ne + ns), bounds=Bounds(0, 1))
    if res.status != 0 or res.x is None:
        return ("Infeasible" if res.status == 2 else f"HiGHS status {res.status}: {res.message}"), np.zeros(0)
    return "Optimal", np.round(res.x[:ne])


_SOLVERS = {"cbc": _solve_pulp, "highs": _solve_highs}


def min_budget(transfers: pd.DataFrame, costs: Mapping[str, float] | None = None,
               max_order: int | None = None, targets: Iterable[str] | None = None) -> float:
    """The cheapest supervision budget for which any policy exists (the same BIP minimising source cost)."""
    pb = _prepare(transfers, costs, None, max_order, targets)
    status, xs = _solve_pulp(pb, np.inf, objective="cost")
    if status != "Optimal":
        raise TaxonomyError(f"no feasible policy at any budget (solver status {status})")
    used = {s for e, on in zip(pb.edges, xs, strict=True) if on for s in e[1]}
    return float(sum(c for s, c in zip(pb.sources, pb.cost, strict=True) if s in used))


def _result(pb: _Problem, chosen: Iterable[int], budget: float, max_order: int | None, solver: str) -> Taxonomy:
    chosen = list(chosen)
    policy = {pb.edges[i][0]: pb.edges[i][1] for i in chosen}
    used = frozenset(s for i in chosen for s in pb.edges[i][1])
    served = {pb.edges[i][0]: pb.names[i] for i in chosen if pb.names}
    return Taxonomy(used, dict(sorted(policy.items())), float(pb.weight[chosen].sum()), budget, max_order, solver,
                    dict(sorted(served.items())))


def solve_taxonomy(transfers: pd.DataFrame, budget: float, costs: Mapping[str, float] | None = None,
                   importance: Mapping[str, float] | None = None, max_order: int | None = None,
                   solver: str = "cbc", targets: Iterable[str] | None = None) -> Taxonomy:
    """Solve the BIP of Sec. 3.4 (Eq. 1-2) for one supervision budget.

    `transfers`: columns target, sources (tuple or "+"-joined string), quality (higher is better, e.g. the AHP
    affinity p_e). `costs` l_s per source task (default 1), `importance` r_t per target (default 1), `max_order`
    drops candidates with more sources, `targets` (default: every target in `transfers`) must each get a transfer.
    `solver`: "cbc" (pulp) or "highs" (scipy.optimize.milp). `.sources` of the result are the source tasks its
    policy uses. Raises TaxonomyError naming a target without a candidate, or an infeasible budget together with
    the cheapest feasible one.
    """
    if solver not in _SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose from {sorted(_SOLVERS)}")
    pb = _prepare(transfers, costs, importance, max_order, targets)
    status, xs = _SOLVERS[solver](pb, budget)
    if status != "Optimal":
        if status == "Infeasible" or status.startswith("Infeasible"):
            cheapest = min_budget(transfers, costs, max_order, pb.targets)
            raise TaxonomyError(f"budget {budget} is infeasible: every policy needs supervision cost >= {cheapest}"
                                f" (cheapest feasible budget {cheapest})")
        raise RuntimeError(f"BIP solver {solver} ended with status {status}")
    return _result(pb, np.flatnonzero(xs > 0.5), budget, max_order, solver)


def brute_force_taxonomy(transfers: pd.DataFrame, budget: float, costs: Mapping[str, float] | None = None,
                         importance: Mapping[str, float] | None = None, max_order: int | None = None,
                         targets: Iterable[str] | None = None) -> Taxonomy:
    """Exhaustive reference for the BIP of Sec. 3.4: for every subset of source tasks within the budget, each
    target takes its best candidate whose sources all lie in the subset; the best subset wins. Exponential in the
    number of source tasks: for tests and benchmarks only."""
    pb = _prepare(transfers, costs, importance, max_order, targets)
    six = {s: j for j, s in enumerate(pb.sources)}
    masks = np.array([sum(1 << six[s] for s in srcs) for _, srcs in pb.edges], dtype=np.int64)
    groups = [np.array([i for i, e in enumerate(pb.edges) if e[0] == t]) for t in pb.targets]
    best_val, best_sel = -np.inf, None
    n = len(pb.sources)
    for k in range(n + 1):
        for combo in itertools.combinations(range(n), k):
            if pb.cost[list(combo)].sum() > budget + 1e-9:
                continue
            m = sum(1 << j for j in combo)
            ok = (masks & ~m) == 0
            sel, val = [], 0.0
            for g in groups:
                g_ok = g[ok[g]]
                if len(g_ok) == 0:
                    break
                i = int(g_ok[np.argmax(pb.weight[g_ok])])
                sel.append(i)
                val += pb.weight[i]
            else:
                if val > best_val + 1e-12:
                    best_val, best_sel = val, sel
    if best_sel is None:
        raise TaxonomyError(f"budget {budget} is infeasible: no source subset within it serves every target")
    return _result(pb, best_sel, budget, max_order, "brute")
