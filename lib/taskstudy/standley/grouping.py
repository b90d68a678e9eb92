"""Which tasks should be learned together (Standley et al., ICML 2020, Sec. 3-4).

Candidate networks (Sec. 3): every non-empty subset of the N tasks as one multi-task network (shared encoder, one
decoder per task) of full size, cost 1 "budget unit" (one full-size encoder's inference cost), plus a half-size
single-task network per task, cost 0.5: 2^N - 1 + N candidates (31 + 5 for the paper's five tasks).

Best grouping (Sec. 3, network selection): choose networks so that every task is served by at least one chosen
network and the total cost fits the budget, minimising the sum over tasks of the lowest loss among the chosen
networks serving it. Solved exactly by branch and bound over task -> network assignments (`best_grouping`);
`method="bip"` solves the same problem as a binary integer program in pulp/CBC; `brute_force_grouping` enumerates
subsets (for tests).

Tie-breaking (branch and bound and brute force alike, so they return the same indices): among groupings whose total
loss is equal (relative tolerance 1e-9), the lower total cost wins, then fewer networks, then the lexicographically
smallest sorted index list. So no returned network is redundant (each one strictly lowers some task's loss).

Pairwise relations (Tables 2-4): `pairwise_table`. Higher-order approximation (Sec. 4): a group's per-task loss
is estimated as the average of the task's losses in the group's pairs (`estimate_higher_order`), and
`predicted_grouping` runs `best_grouping` on that estimated table. The early-stopping approximation (Sec. 4) needs
no code of its own: it is `best_grouping` on a table of losses measured after a short training run.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

LossTable = Sequence[dict[str, float]]
_REL_TOL = 1e-9
COST_EPS = 1e-9


class GroupingError(ValueError):
    """No grouping is possible: an uncovered task, a budget too small, or an inconsistent table."""


# --------------------------------------------------------------------------------------------------- candidates
def candidate_networks(
    tasks: Sequence[str], full_cost: float = 1.0, half_cost: float = 0.5
) -> tuple[list[tuple[str, ...]], list[float]]:
    """All non-empty task subsets as full-size networks (by size, then task order), then half-size singles.

    Returns (networks, costs); 2^N - 1 + N entries for N tasks. A single-task tuple appears twice: full size
    (cost `full_cost`) and half size (cost `half_cost`).
    """
    tasks = list(tasks)
    if len(set(tasks)) != len(tasks):
        raise GroupingError(f"duplicate task names in {tasks}")
    nets = [c for k in range(1, len(tasks) + 1) for c in itertools.combinations(tasks, k)]
    costs = [float(full_cost)] * len(nets)
    nets += [(t,) for t in tasks]
    costs += [float(half_cost)] * len(tasks)
    return nets, costs


def network_names(networks: Sequence[tuple[str, ...]], costs: Sequence[float], full_cost: float = 1.0) -> list[str]:
    """Readable names: 'a+b' for full-size networks, 'a (x0.5)' for networks of another cost."""
    names = []
    for net, c in zip(networks, costs, strict=True):
        name = "+".join(net)
        names.append(name if math.isclose(c, full_cost) else f"{name} (x{c:g})")
    return names


# --------------------------------------------------------------------------------------------------- validation
def _check(losses: LossTable, costs: Sequence[float], tasks: Sequence[str] | None) -> list[str]:
    if len(losses) != len(costs):
        raise GroupingError(f"{len(losses)} loss entries but {len(costs)} costs")
    for i, c in enumerate(costs):
        if not (math.isfinite(c) and c >= 0):
            raise GroupingError(f"network {i} has invalid cost {c}")
    for i, net in enumerate(losses):
        for t, v in net.items():
            if not math.isfinite(v):
                raise GroupingError(f"network {i} has non-finite loss {v} for task {t!r}")
    if tasks is None:
        tasks = list(dict.fromkeys(t for net in losses for t in net))
    tasks = list(tasks)
    if not tasks:
        raise GroupingError("no tasks to cover")
    for t in tasks:
        if not any(t in net for net in losses):
            raise GroupingError(f"task {t!r} is served by no network")
    return tasks


def total_loss(losses: LossTable, chosen: Sequence[int], tasks: Sequence[str] | None = None) -> float:
    """Sum over tasks of the lowest loss among the chosen networks serving it (inf if a task is uncovered)."""
    if tasks is None:
        tasks = list(dict.fromkeys(t for net in losses for t in net))
    total = 0.0
    for t in tasks:
        vals = [losses[i][t] for i in chosen if t in losses[i]]
        if not vals:
            return math.inf
        total += min(vals)
    return total


def _key(losses: LossTable, costs: Sequence[float], chosen: Sequence[int], tasks: Sequence[str]) -> tuple:
    idx = tuple(sorted(chosen))
    return (total_loss(losses, idx, tasks), math.fsum(costs[i] for i in idx), len(idx), idx)


def _better(a: tuple, b: tuple | None) -> bool:
    """Key a beats key b: lower loss (with tolerance), then lower cost (with tolerance), fewer networks, lex."""
    if b is None:
        return True
    if not math.isclose(a[0], b[0], rel_tol=_REL_TOL, abs_tol=1e-12):
        return a[0] < b[0]
    if not math.isclose(a[1], b[1], rel_tol=_REL_TOL, abs_tol=1e-12):
        return a[1] < b[1]
    return (a[2], a[3]) < (b[2], b[3])


def min_cover_cost(losses: LossTable, costs: Sequence[float], tasks: Sequence[str] | None = None) -> float:
    """Cost of the cheapest choice of networks that covers every task (exact, small branch and bound)."""
    tasks = _check(losses, costs, tasks)
    serving = {t: sorted((i for i, net in enumerate(losses) if t in net), key=lambda i: costs[i]) for t in tasks}
    best = [math.inf]

    def rec(covered: frozenset, cost: float) -> None:
        if cost >= best[0] - COST_EPS:
            return
        todo = [t for t in tasks if t not in covered]
        if not todo:
            best[0] = cost
            return
        t = min(todo, key=lambda t: len(serving[t]))
        for i in serving[t]:
            rec(covered | set(losses[i]), cost + costs[i])

    rec(frozenset(), 0.0)
    return best[0]


def _infeasible(losses: LossTable, costs: Sequence[float], budget: float, tasks: Sequence[str]) -> GroupingError:
    cheapest = min_cover_cost(losses, costs, tasks)
    return GroupingError(f"no choice of networks covering every task fits budget {budget:g} "
                         f"(the cheapest covering choice costs {cheapest:g})")


# --------------------------------------------------------------------------------------------------- solvers
def best_grouping(
    losses: LossTable, costs: Sequence[float], budget: float, tasks: Sequence[str] | None = None, method: str = "bnb"
) -> list[int]:
    """Exact best grouping: indices (sorted) of the chosen networks; see the module docstring for tie-breaking.

    losses[i] maps each task network i serves to its loss; costs[i] is its cost in budget units. `tasks` defaults
    to every task any network serves. method "bnb" (branch and bound, default) or "bip" (pulp/CBC; ties are then
    broken by the solver, only the total loss is guaranteed to equal the bnb result).
    """
    tasks = _check(losses, costs, tasks)
    if method == "bip":
        return _bip(losses, costs, budget, tasks)
    if method != "bnb":
        raise ValueError(f"unknown method {method!r} (expected 'bnb' or 'bip')")
    limit = budget + COST_EPS
    # Branch on tasks with the fewest serving networks first; try each task's networks by ascending loss.
    order = sorted(tasks, key=lambda t: sum(t in net for net in losses))
    serving = {t: sorted((i for i, net in enumerate(losses) if t in net), key=lambda i: (losses[i][t], i))
               for t in tasks}
    best: list = [None]

    def bound(k: int, opened: set[int], cost: float) -> float:
        lb = 0.0
        for t in order[k:]:
            vals = [losses[i][t] for i in serving[t] if i in opened or cost + costs[i] <= limit]
            if not vals:
                return math.inf
            lb += min(vals)
        return lb

    def rec(k: int, opened: set[int], cost: float, partial: float) -> None:
        if k == len(order):
            key = _key(losses, costs, opened, tasks)
            if _better(key, best[0]):
                best[0] = key
            return
        lb = partial + bound(k, opened, cost)
        if lb == math.inf:
            return
        if best[0] is not None and lb > best[0][0] and not math.isclose(lb, best[0][0], rel_tol=_REL_TOL):
            return
        t = order[k]
        for i in serving[t]:
            if i in opened:
                rec(k + 1, opened, cost, partial + losses[i][t])
            elif cost + costs[i] <= limit:
                opened.add(i)
                rec(k + 1, opened, cost + costs[i], partial + losses[i][t])
                opened.discard(i)

    rec(0, set(), 0.0, 0.0)
    if best[0] is None:
        raise _infeasible(losses, costs, budget, tasks)
    return list(best[0][3])


def _bip(losses: LossTable, costs: Sequence[float], budget: float, tasks: Sequence[str]) -> list[int]:
    import pulp

    prob = pulp.LpProblem("best_grouping", pulp.LpMinimize)
    new = getattr(prob, "add_variable", None)  # PuLP >= 3.3; LpVariable(...) directly is deprecated there
    var = (lambda name: new(name, cat="Binary")) if new else (lambda name: pulp.LpVariable(name, cat="Binary"))
    n = len(losses)
    x = [var(f"x_{i}") for i in range(n)]
    y = {(k, i): var(f"y_{k}_{i}")
         for k, t in enumerate(tasks) for i in range(n) if t in losses[i]}
    prob += pulp.lpSum(losses[i][tasks[k]] * v for (k, i), v in y.items())
    for k in range(len(tasks)):
        prob += pulp.lpSum(v for (kk, _), v in y.items() if kk == k) == 1
    for (_, i), v in y.items():
        prob += v <= x[i]
    prob += pulp.lpSum(costs[i] * x[i] for i in range(n)) <= budget + COST_EPS
    with warnings.catch_warnings():  # PULP_CBC_CMD (the bundled CBC) is flagged for PuLP 4.0
        warnings.simplefilter("ignore", DeprecationWarning)
        status = prob.solve(pulp.PULP_CBC_CMD(msg=False))
    if pulp.LpStatus[status] != "Optimal":
        raise _infeasible(losses, costs, budget, tasks)
    # Keep only networks that serve a task (drops x_i = 1 set without need).
    return sorted({i for (_, i), v in y.items() if v.value() > 0.5})


def brute_force_grouping(
    losses: LossTable, costs: Sequence[float], budget: float, tasks: Sequence[str] | None = None
) -> list[int]:
    """Every subset of networks within budget, same objective and tie-breaking as `best_grouping` (tests only)."""
    tasks = _check(losses, costs, tasks)
    best = None
    n = len(losses)
    for k in range(1, n + 1):
        for idx in itertools.combinations(range(n), k):
            if math.fsum(costs[i] for i in idx) > budget + COST_EPS:
                continue
            key = _key(losses, costs, idx, tasks)
            if key[0] < math.inf and _better(key, best):
                best = key
    if best is None:
        raise _infeasible(losses, costs, budget, tasks)
    return list(best[3])


# --------------------------------------------------------------------------------------------------- pairwise
def _pair_losses(pair: dict[tuple[str, str], dict[str, float]], a: str, b: str) -> dict[str, float] | None:
    return pair.get((a, b), pair.get((b, a)))


def pairwise_table(single: dict[str, float], pair: dict[tuple[str, str], dict[str, float]]) -> pd.DataFrame:
    """The paper's Tables 2-4: entry (row a, column b) = (L_a alone - L_a with b) / L_a alone.

    Sign convention: positive = training with b helps a (lower loss); negative = b hurts a. `pair[(a, b)]` maps
    both tasks to their losses in the pair network (either key order is accepted). Diagonal and missing pairs: NaN.
    """
    tasks = list(single)
    out = pd.DataFrame(np.nan, index=pd.Index(tasks, name="task"), columns=pd.Index(tasks, name="trained with"))
    for a in tasks:
        for b in tasks:
            if a == b:
                continue
            pl = _pair_losses(pair, a, b)
            if pl is not None and a in pl:
                out.loc[a, b] = (single[a] - pl[a]) / single[a]
    return out


def estimate_higher_order(
    losses: LossTable, networks: Sequence[tuple[str, ...]]
) -> list[dict[str, float]]:
    """Higher-order approximation (Sec. 4): networks of 3+ tasks get, for each task, the mean of its pair losses.

    Networks of one or two tasks keep their measured losses (only those are needed, so larger ones may be absent
    or empty in `losses`). Raises GroupingError naming a missing pair.
    """
    if len(losses) != len(networks):
        raise GroupingError(f"{len(losses)} loss entries but {len(networks)} networks")
    pairs = {frozenset(net): losses[i] for i, net in enumerate(networks) if len(net) == 2}
    est = []
    for i, net in enumerate(networks):
        if len(net) <= 2:
            est.append(dict(losses[i]))
            continue
        row = {}
        for t in net:
            vals = []
            for u in net:
                if u == t:
                    continue
                pl = pairs.get(frozenset((t, u)))
                if pl is None or t not in pl:
                    raise GroupingError(f"pair ({t!r}, {u!r}) needed to estimate network {'+'.join(net)} is missing")
                vals.append(pl[t])
            row[t] = float(np.mean(vals))
        est.append(row)
    return est


def predicted_grouping(
    losses: LossTable, networks: Sequence[tuple[str, ...]], costs: Sequence[float], budget: float
) -> list[int]:
    """The grouping pairwise information alone predicts: `best_grouping` on `estimate_higher_order(losses)`.

    Only the measured losses of single-task (full and half size) and pair networks are used.
    """
    return best_grouping(estimate_higher_order(losses, networks), costs, budget)


# --------------------------------------------------------------------------------------------------- table
def default_budgets(n_tasks: int, step: float = 0.5) -> list[float]:
    """Budgets 1, 1.5, ..., N."""
    return [float(b) for b in np.arange(1.0, n_tasks + step / 2, step)]


def grouping_table(
    losses: LossTable,
    costs: Sequence[float],
    names: Sequence[str],
    budgets: Sequence[float] | None = None,
    predicted: LossTable | None = None,
    select: LossTable | None = None,
) -> pd.DataFrame:
    """Per budget: the best grouping and its total loss, beside all-in-one and all-separate at equal budget.

    all-in-one: the best single network serving every task that fits the budget. all-separate: the best choice of
    single-task networks (of any size listed, e.g. full or half) covering every task within the budget. NaN where
    none fits. If `predicted` (an estimated loss table, e.g. `estimate_higher_order`) is given, the grouping it
    predicts is added with its true total loss under `losses`. `select`: the losses every choice is made on (the
    validation split's), when not `losses` themselves; every reported loss is then the chosen networks' total
    under `losses` (the test split's), and `best_val` the choice's own total under `select`.
    """
    tasks = _check(losses, costs, None)
    sel = losses if select is None else select
    if budgets is None:
        budgets = default_budgets(len(tasks))
    everything = [i for i, net in enumerate(losses) if set(tasks) <= set(net)]
    singles = [i for i, net in enumerate(losses) if len(net) == 1]
    rows = []
    for b in budgets:
        row: dict = {"budget": float(b)}
        try:
            chosen = best_grouping(sel, costs, b, tasks)
            row.update(best=" | ".join(names[i] for i in chosen), best_loss=total_loss(losses, chosen, tasks),
                       best_cost=math.fsum(costs[i] for i in chosen), best_val=total_loss(sel, chosen, tasks))
        except GroupingError:
            row.update(best=None, best_loss=np.nan, best_cost=np.nan, best_val=np.nan)
        fit = [i for i in everything if costs[i] <= b + COST_EPS]
        row["all_in_one_loss"] = (total_loss(losses, [min(fit, key=lambda i: total_loss(sel, [i], tasks))], tasks)
                                  if fit else np.nan)
        sep = _sub_best(sel, costs, b, tasks, singles)
        row["all_separate_loss"] = np.nan if sep is None else total_loss(losses, sep, tasks)
        if predicted is not None:
            try:
                pchosen = best_grouping(predicted, costs, b, tasks)
                row.update(predicted=" | ".join(names[i] for i in pchosen),
                           predicted_loss=total_loss(losses, pchosen, tasks))
            except GroupingError:
                row.update(predicted=None, predicted_loss=np.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def _sub_best(losses: LossTable, costs: Sequence[float], budget: float, tasks: list[str], allowed: list[int]
              ) -> list[int] | None:
    """The best choice (indices into `losses`) using only the networks in `allowed` (None if none covers)."""
    sub = [losses[i] for i in allowed]
    if not all(any(t in net for net in sub) for t in tasks):
        return None
    try:
        chosen = best_grouping(sub, [costs[i] for i in allowed], budget, tasks)
    except GroupingError:
        return None
    return [allowed[k] for k in chosen]


