"""Yosinski et al. 2014's findings measured on the layer-transfer runs (Sec. 4.1-4.3): co-adaptation, the fall of
AnB at the top layers, the larger fall between dissimilar halves, the boost of AnB+ and the random-filter
control, each per seed with its seed band and verdict, beside the paper's ImageNet numbers (reference/).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from taskstudy import uncertainty
from taskstudy.reference import read_reference
from taskstudy.yosinski.layers import BASES, SPLIT_KINDS

# Paper conditions (reference CSV) -> (split kind, our treatment name).
PAPER_CONDITIONS: dict[str, tuple[str, str]] = {
    "baseA_baseB_random_halves": ("similar", "baseB"),
    "selffer_BnB": ("similar", "BnB"),
    "selffer_BnB_plus": ("similar", "BnB+"),
    "transfer_AnB": ("similar", "AnB"),
    "transfer_AnB_plus": ("similar", "AnB+"),
    "random_weights_nolearn": ("similar", "random"),
    "natman_base_A": ("dissimilar", "baseA"),
    "natman_base_B": ("dissimilar", "baseB"),
    "natman_transfer_AB": ("dissimilar", "AnB"),
    "natman_transfer_BA": ("dissimilar", "BnA"),
}


PAPER_CSV = "yosinski2014_imagenet_top1.csv"


def calibration_curves(runs: pd.DataFrame) -> pd.DataFrame:
    """The base nets' training and validation loss per epoch (tidy rows: split_kind, treatment, seed, epoch,
    split, loss, best), for the calibration figure."""
    rows = []
    for r in runs[runs.treatment.isin(BASES)].itertuples():
        for split, losses in (("train", r.train_loss), ("val", r.val_loss)):
            rows += [{"split_kind": r.split_kind, "treatment": r.treatment, "seed": r.seed, "epoch": e,
                      "split": split, "loss": v, "best": e == r.best_epoch} for e, v in enumerate(losses, 1)]
    return pd.DataFrame(rows)


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, std, min, max and runs of top-1 per (split_kind, treatment, n)."""
    g = df.groupby(["split_kind", "treatment", "n"], sort=False)["top1"]
    out = g.agg(mean="mean", std="std", min="min", max="max", runs="count").reset_index()
    return out


#: finding -> (what the paper states, the sign its difference has when the finding holds)
FINDINGS: dict[str, tuple[str, int]] = {
    "coadaptation": ("BnB falls below baseB in the middle layers: co-adapted layers split apart (Sec. 4.1)", -1),
    "anb_falls": ("AnB falls below baseB at the top layers: their features are specific to A (Sec. 4.1)", -1),
    "dissimilar_worse": ("AnB's fall is larger between dissimilar halves (Sec. 4.2)", +1),
    "anbplus_boost": ("AnB+ is above baseB: transfer plus fine-tuning generalises better (Sec. 4.1)", +1),
    "random_worse": ("random filters fall below transferred ones from n = 2 on (Sec. 4.3)", -1),
}


#: finding -> how its difference is computed (for the chapter's table)
STATISTICS: dict[str, str] = {
    "coadaptation": "mean over the middle n (3..L-3; 2..L-2 for L < 6) of BnB - baseB, random split",
    "anb_falls": "mean over the top two n of AnB - baseB, random split",
    "dissimilar_worse": "relative fall of AnB (top two n, / baseB): dissimilar minus random split",
    "anbplus_boost": "mean over n of AnB+ - baseB, random split",
    "random_worse": "mean over n >= 2 of random - AnB, random split",
}


def _seed_stats(df: pd.DataFrame) -> dict[str, float]:
    """The five findings' differences on one seed's runs (or on the paper's means)."""
    m = df.groupby(["split_kind", "treatment", "n"])["top1"].mean()

    def curve(kind: str, treatment: str) -> pd.Series:
        try:
            return m.loc[(kind, treatment)].sort_index()
        except KeyError:
            return pd.Series(dtype=float)

    base = {k: float(curve(k, "baseB").mean()) for k in SPLIT_KINDS}
    anb = {k: curve(k, "AnB") for k in SPLIT_KINDS}
    L = int(max(anb["similar"].index.max(), curve("similar", "BnB").index.max())) + 1
    top = [n for n in (L - 2, L - 1)]

    def fall(k: str) -> float:
        return float((base[k] - anb[k].reindex(top)).mean() / base[k]) if base[k] > 0 else float("nan")

    bnb, plus, rnd = curve("similar", "BnB"), curve("similar", "AnB+"), curve("similar", "random")
    lo = 3 if L >= 6 else 2  # the paper's middle layers of 8: n = 3..5
    middle = [n for n in bnb.index if lo <= n <= L - lo]
    late = [n for n in rnd.index if n >= 2 and n in anb["similar"].index]
    return {
        "coadaptation": float((bnb.reindex(middle) - base["similar"]).mean()),
        "anb_falls": float((anb["similar"].reindex(top) - base["similar"]).mean()),
        "dissimilar_worse": fall("dissimilar") - fall("similar"),
        "anbplus_boost": float((plus - base["similar"]).mean()),
        "random_worse": float((rnd.reindex(late) - anb["similar"].reindex(late)).mean()) if late else float("nan"),
    }


def selffer_gain(df: pd.DataFrame) -> dict[str, float]:
    """BnB+ - baseB on the random split (mean over the fine-tuned n; per seed, then mean and 95% seed band): what a
    second round of training from a base's own layers adds. The paper finds about zero (BnB+ recovers baseB,
    Sec. 4.1); a clearly positive value says the selffer nets gain from the retraining itself, which hides a
    co-adaptation dip."""
    gains = []
    for _, d in df[df.split_kind == "similar"].groupby("seed"):
        base = d[d.treatment == "baseB"].top1.mean()
        gains.append(float(d[d.treatment == "BnB+"].top1.mean() - base))
    mean, lo, hi = uncertainty.seed_interval(gains)
    return {"gain": mean, "lo": lo, "hi": hi}


def findings(df: pd.DataFrame, paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """Yosinski et al.'s findings measured on the runs: per finding the difference it is about, computed per seed
    (each seed's treatments against that seed's base nets), its mean and 95% seed band (uncertainty.seed_interval)
    and the verdict against the band (uncertainty.sign_verdict); with `paper`, the same difference on the paper's
    means beside it."""
    per_seed = pd.DataFrame([_seed_stats(d) for _, d in df.groupby("seed")]) if "seed" in df else \
        pd.DataFrame([_seed_stats(df)])
    ref = _seed_stats(paper) if paper is not None else {}
    rows = []
    for f, (claim, sign) in FINDINGS.items():
        mean, lo, hi = uncertainty.seed_interval(per_seed[f])
        rows.append({"finding": f, "claim": claim, "statistic": STATISTICS[f], "paper": ref.get(f, np.nan),
                     "study": mean, "lo": lo, "hi": hi, "seeds": int(per_seed[f].notna().sum()),
                     "verdict": uncertainty.sign_verdict(lo, hi, sign)})
    return pd.DataFrame(rows).set_index("finding")


def paper_beside(f: pd.DataFrame, setting: str) -> pd.DataFrame:
    """The paper's claims (reference/claims.csv) beside the study's findings (`findings`) and `setting` (the
    study's setup in words), each with its verdict against the seed band."""
    from taskstudy.reference import beside

    study: dict[str, tuple[str, bool | None]] = {"setting": (setting, None)}
    study |= {k: (f"{r.study:+.3f} [{r.lo:+.3f}, {r.hi:+.3f}] ({r.seeds} seeds)", None) for k, r in f.iterrows()}
    table = beside("08_layer_transfer", "paper (Yosinski et al. 2014)", study)
    table["verdict"] = [("setting" if k == "setting" else f.loc[k, "verdict"]) for k in table["finding"]]
    return table.drop(columns="agrees")


def base_levels(df: pd.DataFrame, splits: Mapping[str, Mapping[str, np.ndarray]]) -> pd.DataFrame:
    """Each base net's top-1 (mean and seed band) against chance, per split: the yardstick every treatment is
    read against (issue 18's target: >= 40% and >= 10x chance)."""
    rows = []
    for (kind, treatment), d in df[df.treatment.isin(BASES)].groupby(["split_kind", "treatment"]):
        mean, lo, hi = uncertainty.seed_interval(d.top1)
        chance = 1 / len(splits[kind][treatment[-1]])
        rows.append({"split": kind, "net": treatment, "classes": len(splits[kind][treatment[-1]]), "top-1": mean,
                     "seed band lo": lo, "seed band hi": hi, "chance": chance, "x chance": mean / chance,
                     "epochs (median)": float(d.epochs_run.median()) if "epochs_run" in d else np.nan})
    return pd.DataFrame(rows)


def load_paper_curves(path: str | Path | None = None) -> pd.DataFrame:
    """Yosinski et al.'s ImageNet top-1 per condition and n (reference CSV) as rows of split_kind, treatment,
    n, top1, runs, condition."""
    p = Path(path) if path is not None else None
    raw = (read_reference(PAPER_CSV, p) if p is None or p.is_dir() else read_reference(p.name, p.parent))
    need = {"condition", "n_layers_copied", "mean_top1", "runs"}
    if not need <= set(raw.columns):
        raise ValueError(f"{p}: expected columns {sorted(need)}, got {list(raw.columns)}")
    raw = raw[raw.condition.isin(PAPER_CONDITIONS)]
    kinds = raw.condition.map(lambda c: PAPER_CONDITIONS[c][0])
    treat = raw.condition.map(lambda c: PAPER_CONDITIONS[c][1])
    out = pd.DataFrame({"split_kind": kinds, "treatment": treat, "n": raw.n_layers_copied.astype(int),
                        "top1": raw.mean_top1.astype(float), "runs": raw.runs.astype(int),
                        "condition": raw.condition})
    base = out[(out.condition == "baseA_baseB_random_halves")].assign(treatment="baseA")
    return pd.concat([out, base], ignore_index=True)
