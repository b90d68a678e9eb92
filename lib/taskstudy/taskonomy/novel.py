"""Generalisation to novel tasks (Taskonomy, Zamir et al. 2018, Sec. 4.3, Fig. 10 and its novel-task table).

The held-out tasks (taskstudy.world.tasks.held_out_tasks) are targets only: they get a fully supervised network (Step I,
the reference of Quality), readouts from every dictionary task plus `random` and `scratch` (Step II), and AHP
affinities (Step III) over the dictionary tasks as the only candidate sources. The taxonomy's choice for a novel
target is the BIP's policy over those affinities (Step IV). It is compared, per test image, with:

- `scratch`: the target's network trained from scratch on the transfer split (Gain);
- `imagenet`: a readout on an "ImageNet-like" encoder: the same Encoder architecture trained on supervised
  classification in another domain (the object world's pretrain classes, objects.classes("pretrain"): 8 shapes
  in 4 colours, early-stopped on their validation split), store-cached;
- the self-supervised encoders of the dictionary (autoencoding, colorization, jigsaw, inpainting): their
  first-order readouts;
- `full`: the target's fully supervised network (Quality).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from taskstudy import reference, uncertainty
from taskstudy.engine.codehash import computation_hash
from taskstudy.engine.parallel import units_beside
from taskstudy.engine.store import Store
from taskstudy.nn.models import TaskNetwork
from taskstudy.nn.train import TrainConfig, fit_validated, kernels, predict, resolve_device
from taskstudy.taskonomy import ahp, evaluate
from taskstudy.taskonomy import taxonomy as taxmod
from taskstudy.taskonomy.features import SPLITS, query_images, query_kind
from taskstudy.taskonomy.step2 import transfers
from taskstudy.taskonomy.task_networks import StepResult, study_tasks, task_networks, unit_seed
from taskstudy.taskonomy.transfer import FULL, SCRATCH, fit_readout, protocol
from taskstudy.world import data, objects
from taskstudy.world import tasks as taskdict

if TYPE_CHECKING:
    from taskstudy.engine.params import StudyParams

VERSION = "2"  # 2: readouts early-stopped on val, queries in the target's form
IMAGENET = "imagenet"  # the supervised-classification encoder from another domain
SELF_SUPERVISED = ("autoencoding", "colorization", "jigsaw", "inpainting")
TAXONOMY = "taxonomy"

# The paper's columns that correspond to this study's baselines.
PAPER_COLUMNS = {SCRATCH: "scratch", IMAGENET: "ImageNet", "colorization": "Zhang (colorization)",
                 "jigsaw": "Noroozi (jigsaw)", FULL: "full sup."}

def paper_wins() -> pd.DataFrame:
    """The paper's novel-task table (Zamir et al. 2018, Table 2): win rates of the taxonomy's transfer against each
    method, per novel task (reference/taskonomy/novel_task_wins.csv). Columns: the paper's reference numbers [49]
    ImageNet (Krizhevsky et al.), [93] Wang (tracking), [1] Agrawal (egomotion), [97] Zamir (generic 3D), [100]
    Zhang (colorization), [65] Noroozi (jigsaw)."""
    return reference.taskonomy_novel_wins()


def paper_gain_quality() -> pd.DataFrame:
    """The paper's per-task Gain and Quality by max order (Fig. 9; reference/taskonomy/gain_quality_by_order.csv),
    tidy: task (study name, None where the study has no counterpart), paper_task, metric, order, value. The
    taxonomy chapter sets the paper's order trend beside the study's."""
    return reference.taskonomy_gain_quality()


def _cfg(params: StudyParams) -> Any:
    return params.section("novel_tasks")


def imagenet_key(params: StudyParams) -> dict[str, Any]:
    """Everything that determines the ImageNet-like encoder's weights."""
    cfg, net = _cfg(params), params.section("task_networks")
    return {"world": "pretrain", "n_images": cfg.imagenet_n_images, "epochs": cfg.imagenet_epochs,
            "patience": cfg.imagenet_patience, "seed": params.common.seed, "image_size": params.common.image_size,
            "width": net.width, "depth": net.depth, "decoder_width": net.decoder_width,
            "batch_size": net.batch_size, "lr": net.lr, "code": computation_hash(train_imagenet),
            **kernels(params.common)}


def _imagenet_network(params: StudyParams) -> TaskNetwork:
    net_cfg = params.section("task_networks")
    return TaskNetwork("classification", objects.num_classes("pretrain"), net_cfg.width, net_cfg.depth,
                       net_cfg.decoder_width)


def train_imagenet(params: StudyParams) -> dict[str, Any]:
    """Train the "ImageNet-like" network (no store): the study's Encoder with a classification decoder, on
    `imagenet_n_images` images of the object world's pretrain classes (no class or image of the chapters' tasks),
    early-stopped on a validation split a fifth the size, scored on a test split as large. Returns state (the
    whole network), log, test_accuracy, chance, epochs, wall_s."""
    store = Store.for_params(params)
    cfg, net_cfg = _cfg(params), params.section("task_networks")
    seed = unit_seed(params.common.seed, IMAGENET)
    size, n_classes = params.common.image_size, objects.num_classes("pretrain")
    n_eval = max(n_classes, cfg.imagenet_n_images // 5)
    train, val, test = (data.object_split(store, split, n, params.common.seed, size, "pretrain")
                        for split, n in (("train", cfg.imagenet_n_images), ("val", n_eval), ("test", n_eval)))
    torch.manual_seed(seed)
    net = _imagenet_network(params)
    start = time.perf_counter()
    log = fit_validated(net, torch.from_numpy(train["rgb"]), torch.from_numpy(train["label"]), F.cross_entropy,
                        TrainConfig(cfg.imagenet_epochs, net_cfg.batch_size, net_cfg.lr, seed=seed,
                                    **kernels(params.common)),
                        (torch.from_numpy(val["rgb"]), torch.from_numpy(val["label"])),
                        patience=cfg.imagenet_patience, device=resolve_device(params.common.device))
    wall = time.perf_counter() - start
    pred = predict(net, torch.from_numpy(test["rgb"])).argmax(1).numpy()
    return {"state": {k: v.cpu() for k, v in net.state_dict().items()}, "log": log.as_dict(), "wall_s": wall,
            "test_accuracy": float((pred == test["label"]).mean()), "n_test": len(test["label"]),
            "chance": 1 / n_classes, "classes": n_classes, "epochs": log.epochs_run}


def imagenet_encoder(params: StudyParams) -> dict[str, Any]:
    """The ImageNet-like network (`train_imagenet`), read from the store or trained here and stored."""
    return Store.for_params(params).get_or_compute("imagenet_encoder", imagenet_key(params),
                                                   lambda: train_imagenet(params), VERSION, fmt="pt")


def _load_imagenet(params: StudyParams) -> torch.nn.Module:
    net = _imagenet_network(params)
    net.load_state_dict(imagenet_encoder(params)["state"])
    return net.encoder.eval()


def readout_key(params: StudyParams, target: str) -> dict[str, Any]:
    """Everything that determines the imagenet -> target readout (the protocol of transfer.readout_key)."""
    cfg = params.section("transfers")
    return {"target": target, "sources": IMAGENET, "encoder": imagenet_key(params), "query": query_kind(target),
            **{split: data.split_key(params.common, split) for split in SPLITS},
            "readout_width": cfg.readout_width, "epochs": cfg.epochs, "patience": cfg.patience,
            "batch_size": cfg.batch_size, "lr": cfg.lr, "seed": params.common.seed,
            **{k: v for k, v in kernels(params.common).items() if k in ("precision", "channels_last")},
            "code": computation_hash(novel_readout_unit)}


def novel_readout_unit(unit: tuple[Any, str]) -> dict[str, Any]:
    """One imagenet -> target readout (Step II's protocol on the frozen ImageNet-like encoder): its scores and
    training facts."""
    params, target = unit
    enc = _load_imagenet(params)
    z = {split: predict(enc, query_images(params, split, query_kind(target))) for split in SPLITS}
    scores, info = fit_readout(protocol(params), target, z, IMAGENET)
    return {"scores": scores, **info}


def imagenet_scores(params: StudyParams, targets: Sequence[str]) -> pd.DataFrame:
    """Per-image test scores of the imagenet -> target readouts (the score table's columns), store-cached. The
    imagenet encoder is a reference, never a candidate: only the test split's scores are tabled."""
    from taskstudy.engine.parallel import run_units

    store = Store.for_params(params)
    imagenet_encoder(params)  # trained (or read) here, before any worker reads it
    run_units(novel_readout_unit, [(params, t) for t in targets], store=store, kind="novel_readout",
              key=lambda u: readout_key(params, u[1]), version=VERSION, common=params.common,
              save=lambda u, r: store.save("novel_readout", readout_key(params, u[1]), r, VERSION, fmt="pt"),
              desc="novel tasks: imagenet readouts")
    frames = []
    for target in targets:
        r = store.load("novel_readout", readout_key(params, target), VERSION)
        s = np.asarray(r["scores"], dtype=np.float64)
        frames.append(pd.DataFrame({"target": target, "sources": IMAGENET, "order": 1, "image": np.arange(len(s)),
                                    "score": s}))
    return pd.concat(frames, ignore_index=True)


def novel_affinity(scores: pd.DataFrame, max_order: int) -> pd.DataFrame:
    """Step III for the novel targets: AHP affinities over the dictionary tasks' source sets only (the
    baselines and the imagenet encoder are left out of the candidates)."""
    return ahp.affinity_matrix(scores, max_order=max_order, exclude=(*ahp.BASELINES, IMAGENET))


def novel_taxonomy(affinity: pd.DataFrame, budget: int | None, max_order: int) -> taxmod.Taxonomy:
    """Step IV for the novel targets: the BIP over their affinities; budget None = every dictionary task."""
    tr = taxmod.transfers_from_affinity(affinity)
    n_sources = len({s for tup in tr["sources"] for s in tup})
    return taxmod.solve_taxonomy(tr, n_sources if not budget else budget, max_order=max_order)


def comparison(scores: pd.DataFrame, tax: taxmod.Taxonomy,
               baselines: Sequence[str] = (SCRATCH, IMAGENET, *SELF_SUPERVISED, FULL), n_boot: int = 1000,
               seed: int = 0) -> pd.DataFrame:
    """The novel-task table: per target, the taxonomy's source set and its win rate against each baseline
    (Gain = vs scratch, Quality = vs full); a row "mean" over targets, and rows "mean lo" / "mean hi" with its
    95% bootstrap interval over the test images (n_boot > 0)."""
    rows = []
    for target in tax.policy:
        key = tax.candidate(target)
        row: dict[str, Any] = {"target": target, "taxonomy's sources": key}
        for b in baselines:
            have = scores[(scores.target == target) & (scores.sources == b)]
            row[b] = evaluate.win_rate(scores, target, key, b) if len(have) else np.nan
        rows.append(row)
    table = pd.DataFrame(rows).set_index("target")
    table.loc["mean"] = table[list(baselines)].mean()
    table.loc["mean", "taxonomy's sources"] = ""
    if n_boot:
        for b in baselines:
            if table.loc["mean", b] == table.loc["mean", b]:  # not NaN
                lo, hi = evaluate.mean_win_rate_interval(scores, tax, b, n_boot, seed)
                table.loc["mean lo", b], table.loc["mean hi", b] = lo, hi
        table.loc[["mean lo", "mean hi"], "taxonomy's sources"] = ""
    return table


def loss_table(scores: pd.DataFrame, tax: taxmod.Taxonomy,
               baselines: Sequence[str] = (SCRATCH, IMAGENET, *SELF_SUPERVISED, FULL)) -> pd.DataFrame:
    """Mean test loss (negative mean score; lower is better) per novel target of each baseline and of the
    taxonomy's choice (the paper's second row per task)."""
    mean = scores.groupby(["target", "sources"])["score"].mean()
    rows = {t: {**{b: -mean.get((t, b), np.nan) for b in baselines}, TAXONOMY: -mean[(t, tax.candidate(t))]}
            for t in tax.policy}
    return pd.DataFrame(rows).T.rename_axis("target")


def paper_beside(table: pd.DataFrame) -> pd.DataFrame:
    """The study's mean win rates of the taxonomy beside the paper's (mean over its ten novel tasks), for the
    baselines both have."""
    rows, wins = [], paper_wins()
    for ours, theirs in PAPER_COLUMNS.items():
        if ours not in table.columns:
            continue
        paper = wins[theirs].mean()
        row = {"against": ours, "paper's column": theirs, "paper (mean win rate)": paper,
               "study (mean win rate)": table.loc["mean", ours]}
        if "mean lo" in table.index:
            lo, hi = table.loc["mean lo", ours], table.loc["mean hi", ours]
            row |= {"study lo": lo, "study hi": hi, "verdict": uncertainty.verdict(lo, hi, paper)}
        rows.append(row)
    return pd.DataFrame(rows)


def mean_findings(table: pd.DataFrame, n_train: int, epochs: int) -> list[str]:
    """The novel-task table's mean row read against its bootstrap interval (Sec. 4.3): which alternatives the
    taxonomy beats, ties (the interval holds 0.5) or loses to, Gain and Quality with their intervals; and, when
    the taxonomy beats full supervision, what "full" means at this scale (`n_train` scenes, `epochs`)."""
    cols = [c for c in table.columns if c != "taxonomy's sources"]
    mean, lo, hi = (table.loc[r, cols].astype(float) for r in ("mean", "mean lo", "mean hi"))
    beaten = [c for c in cols if lo[c] > 0.5]
    tied = [c for c in cols if lo[c] <= 0.5 <= hi[c]]
    lost = [c for c in cols if hi[c] < 0.5]
    out = [f"Averaged over the novel targets, with 95% bootstrap intervals over the test images, the taxonomy's "
           f"transfer beats {', '.join(beaten) or 'none of them'} beyond noise"
           + (f", is within noise of {', '.join(tied)}" if tied else "")
           + (f", and loses to {', '.join(lost)} beyond noise" if lost else "")
           + f". Gain = {mean[SCRATCH]:.2f} [{lo[SCRATCH]:.2f}, {hi[SCRATCH]:.2f}], Quality = {mean[FULL]:.2f} "
           f"[{lo[FULL]:.2f}, {hi[FULL]:.2f}]."]
    if mean[FULL] > 0.5:
        out.append(f"Unlike the paper, the taxonomy beats full supervision on average. Here 'full' means the novel "
                   f"target's own network, trained on {n_train} scenes for {epochs} epochs; at this scale it is a "
                   f"weak reference, while the transfer reads features of a dictionary network of the same size.")
    return out


def beside_findings(side: pd.DataFrame) -> str:
    """`paper_beside`'s table in a sentence: on how many alternatives the study and the paper put the taxonomy on
    the same side of 0.5, and each paper number's verdict against the study's interval."""
    agree = (side["paper (mean win rate)"] > 0.5) == (side["study (mean win rate)"] > 0.5)
    differ = ", ".join(side.loc[~agree, "against"])
    return (f"The study agrees with the paper on which side of 0.5 the taxonomy falls for {int(agree.sum())} of "
            f"{len(side)} alternatives" + (f" (not for: {differ})." if differ else ".")
            + " Against the study's 95% interval, the paper's mean win rate is: "
            + "; ".join(f"{a}: {v}" for a, v in zip(side["against"], side["verdict"], strict=True)) + ".")


def novel_tasks(params: StudyParams, targets: Sequence[str] | None = None) -> StepResult:
    """The whole novel-task experiment: Step I-IV for the held-out targets, the imagenet encoder and its
    readouts. results: scores (every readout and baseline, imagenet included), affinity, taxonomy, table
    (win rates), losses, imagenet (the encoder's training facts)."""
    start = time.perf_counter()
    cfg = _cfg(params)
    targets = list(targets or taskdict.held_out_tasks())
    missing = [s for s in SELF_SUPERVISED if s not in study_tasks(params.common)]
    if missing:
        raise ValueError(f"the self-supervised sources {missing} are not in common.tasks")
    store = Store.for_params(params)
    with units_beside(train_imagenet, [params], store=store, kind="imagenet_encoder", key=imagenet_key,
                      version=VERSION, common=params.common,
                      save=lambda p, net: store.save("imagenet_encoder", imagenet_key(p), net, VERSION, fmt="pt")):
        step1 = task_networks(params, tasks=targets)  # the ImageNet-like network trains beside Steps I-II
        step2 = transfers(params, targets=targets)
    net = imagenet_encoder(params)
    scores = pd.concat([step2.results["scores"], imagenet_scores(params, targets)], ignore_index=True)
    scores.attrs["split"] = "test"
    order = min(cfg.max_order, params.section("transfers").max_order)
    affinity = novel_affinity(step2.results["val_scores"], order)  # selection on val, the tables on test
    tax = novel_taxonomy(affinity, cfg.budget, order)
    results = {"scores": scores, "affinity": affinity, "taxonomy": tax,
               "table": comparison(scores, tax, seed=params.common.seed),
               "losses": loss_table(scores, tax), "gain_quality": evaluate.policy_gain_quality(scores, tax),
               "imagenet": {k: v for k, v in net.items() if k != "state"}, "max_order": order}
    return StepResult(results, step1.computed + step2.computed, time.perf_counter() - start)


__all__ = ["IMAGENET", "SELF_SUPERVISED", "paper_wins", "imagenet_encoder", "imagenet_scores", "novel_affinity",
           "novel_taxonomy", "comparison", "loss_table", "paper_beside", "novel_tasks", "paper_gain_quality"]
