"""Task2Vec's findings in the chapter's words (Achille et al. 2019, Sec. 4-5): the numbers and booleans of the
paper's claims computed from the embeddings (`findings`), the sentences that state them, and the paper beside.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from taskstudy.reference import beside
from taskstudy.task2vec.distances import distance_matrix
from taskstudy.task2vec.selection import attribute_test, condition_test

HOLDS = {True: "holds", False: "does not hold"}


def findings(names: Sequence[str], matrix: np.ndarray, table: pd.DataFrame, selection: pd.DataFrame,
             factor: float = 2.0, seed: int = 0) -> dict[str, Any]:
    """The paper's findings, computed here: numbers and booleans the chapter states in sentences."""
    dist = distance_matrix(matrix, "sym")
    att = attribute_test(names, dist, seed=seed)
    cond = condition_test(names, dist)
    rho, p_rho = spearmanr(table["norm"], table["probe error"])
    obj = table[table.attribute != "scene"]
    rho_c, p_c = spearmanr(obj["norm"], obj["probe error"])
    r = selection["ratio"]
    return {
        "n_tasks": len(names), "n_filters": int(matrix.shape[1]),
        "d_same_attribute": att["same"], "d_different_attribute": att["different"],
        "attribute_p": att["p"], "attribute_tasks": att["n_tasks"],
        "distance_tracks_attributes": bool(att["same"] < att["different"] and att["p"] < 0.05),
        "nn_same_attribute": att["nn_same"], "nn_chance": att["nn_chance"],
        "d_same_palette": cond["same"], "d_different_palette": cond["different"],
        "palette_closer": bool(cond["same"] < cond["different"]),
        "norm_error_spearman": float(rho), "norm_error_p": float(p_rho),
        "norm_error_spearman_objects": float(rho_c), "norm_error_p_objects": float(p_c),
        "norm_tracks_error": bool(rho > 0 and p_rho < 0.05),
        "factor": factor, "ratio_median": float(r.median()), "ratio_mean": float(r.mean()),
        "ratio_max": float(r.max()), "worst_task": str(selection.loc[r.idxmax(), "task"]),
        "n_within_factor": int((r <= factor).sum()), "n_best_chosen": int((r <= 1 + 1e-9).sum()),
        "within_factor": bool(r.median() <= factor),
        "sym_ratio_median": float(selection["symmetric ratio"].median()),
        "m2v_ratio_median": float(selection["model2vec ratio"].median()),
        "m2v_n_best": int((selection["model2vec ratio"] <= 1 + 1e-9).sum()),
        "random_ratio_median": float(selection["random ratio"].median()),
        "beats_random": bool(r.median() < selection["random ratio"].median()),
        "probe_error_mean": float(table["probe error"].mean()),
        "chance_error_mean": float((1 - 1 / table["classes"]).mean()),
        "random_ratio_spread": float(selection["random ratio"].median() - 1),
    }


def discussion(f: dict[str, Any], image_size: int, n_images: int) -> str:
    """Sentences, built from `findings`, on where the study agrees with the paper and why it may not."""
    out = []
    if f["distance_tracks_attributes"]:
        out.append("Task2Vec distance separates the tasks by the attribute they ask about, as the paper's "
                   "embeddings separate taxonomic and semantic groups: the Fisher of the probe's filters depends "
                   "on which features the head reads, and colour and shape are read from different filters.")
    else:
        out.append(f"Unlike the paper, distances do not separate the tasks by attribute (same "
                   f"{f['d_same_attribute']:.3f} vs different {f['d_different_attribute']:.3f}, "
                   f"p = {f['attribute_p']:.3f}): the probe's "
                   f"filters carry too little of one attribute for their Fisher to tell the questions apart.")
    gap = f"mean probe error {f['probe_error_mean']:.2f} against a mean chance error of {f['chance_error_mean']:.2f}"
    if f["norm_tracks_error"]:
        out.append(f"The embedding norm grows with the test error, as in the paper ({gap}).")
    else:
        out.append(f"The norm does not track difficulty here, unlike the paper ({gap}). The probe is a small "
                   f"network pretrained on the object world's 32 pretrain classes and the heads see {n_images} "
                   f"images of {image_size} pixels; where a task sits near chance the predictive distribution is "
                   f"flat and the Monte-Carlo Fisher measures how much the head is used rather than how hard the "
                   f"task is. The family also mixes 2 to 48 classes, and the Fisher grows with the number of "
                   f"classes the head separates, not only with the error. The paper's probe is an ImageNet "
                   f"ResNet-34 whose features fit most of its tasks well.")
    if f["within_factor"] and f["beats_random"]:
        out.append("Expert selection behaves as in the paper: the picked expert is close to the best and better "
                   "than an uninformed pick.")
    else:
        why = (f"Here every expert is close to every other (a random pick is only {f['random_ratio_spread']:.0%} "
               f"worse than the best at the median): all experts see the same kind of images and most are trained "
               f"on a few hundred of them, so how many images an expert saw matters more than which task it "
               f"solved, and a distance between tasks cannot see that.")
        if f["within_factor"]:
            out.append("Task2Vec's pick is within the stated factor of the best, as in the paper, but it does not "
                       "improve on a random pick. " + why)
        else:
            out.append("Task2Vec's pick is not within the stated factor of the best. " + why)
    return "\n\n".join(out)


def paper_beside(f: dict[str, Any], selection: pd.DataFrame) -> pd.DataFrame:
    """The paper's claims (reference/claims.csv; the sources state no numbers for them) beside the study's
    numbers from `findings` and `expert_selection`, with whether the study agrees (None: not tested here)."""
    n = f["n_tasks"]
    chance = n / (n - 1)  # expected number of best picks of a uniformly random expert (n - 1 candidates per task)
    differ = int((selection["chosen expert"] != selection["symmetric pick"]).sum())
    study = {
        "distance": (f"same-attribute tasks at mean distance {f['d_same_attribute']:.3f}, different-attribute at "
                     f"{f['d_different_attribute']:.3f} (permutation p = {f['attribute_p']:.4f})",
                     f["distance_tracks_attributes"]),
        "norm": (f"Spearman rho(norm, test error) = {f['norm_error_spearman']:.2f} over {n} tasks "
                 f"(p = {f['norm_error_p']:.3f})", f["norm_tracks_error"]),
        "expert": (f"picks the best expert for {f['n_best_chosen']} of {n} tasks (a random pick: {chance:.1f} "
                   f"expected); median error ratio to the best {f['ratio_median']:.2f}",
                   f["n_best_chosen"] > chance),
        "metric": (f"asymmetric and symmetric picks differ for {differ} of {n} tasks; median error ratio "
                   f"{f['ratio_median']:.2f} (asymmetric) vs {f['sym_ratio_median']:.2f} (symmetric)",
                   differ > 0 and not np.isclose(f["ratio_median"], f["sym_ratio_median"])),
        "dataset_size": ("not measured (one training-set size)", None),
    }
    return beside("09_task2vec", "paper (Achille et al. 2019)", study)


def distance_finding(f: dict[str, Any]) -> str:
    """Sec. 4's first claim in a sentence: Task2Vec distance tracks the attribute a task asks about."""
    return (f"**Distance tracks the attribute asked.** Over the {f['attribute_tasks']} tasks that ask for a shape or "
            f"a colour, two tasks asking for the same attribute are at mean distance {f['d_same_attribute']:.3f}, two "
            f"asking for different ones at {f['d_different_attribute']:.3f} (permutation p = {f['attribute_p']:.4f}); "
            f"the nearest neighbour of a task asks the same attribute for {f['nn_same_attribute']:.0%} of the tasks "
            f"(chance {f['nn_chance']:.0%}). The paper's finding that Task2Vec distance follows task similarity "
            f"**{HOLDS[f['distance_tracks_attributes']]}** here. Within the 'colour given shape' tasks, two tasks "
            f"whose shapes share a super-category (the same six colours to tell apart) are at "
            f"{f['d_same_palette']:.3f}, pairs across super-categories at {f['d_different_palette']:.3f}.")


def domain_finding(d: dict[str, float]) -> str:
    """Sec. 3's domain embedding against the task embedding (`selection.domain_test`): do the labels, not the
    images, separate the tasks?"""
    same = (f"Tasks on the same images are at mean distance {d['same_images_task']:.3f} under the task embedding and "
            f"{d['same_images_domain']:.3f} under the domain embedding")
    if d["same_images_task"] > d["same_images_domain"]:
        return (f"{same}. Same-attribute tasks are closer than different-attribute ones by "
                f"{d['attribute_gap_task']:.3f} under the task embedding (permutation p = {d['attribute_p_task']:.4f})"
                f" and by {d['attribute_gap_domain']:.3f} under the domain embedding (p = "
                f"{d['attribute_p_domain']:.4f}): what separates the questions is the labels, as in the paper.")
    return f"{same}: unlike the paper, the labels do not separate them here."


def selection_finding(f: dict[str, Any], alpha: float) -> str:
    """Sec. 5's expert selection in a sentence: the picked expert's error against the best, beside the
    symmetric distance's, Model2Vec's and a random pick."""
    return (f"Task2Vec's pick (asymmetric, alpha = {alpha}) has a median error ratio of {f['ratio_median']:.2f} "
            f"(mean {f['ratio_mean']:.2f}, worst {f['ratio_max']:.2f} on '{f['worst_task']}'); it is within the "
            f"stated factor {f['factor']} of the best for {f['n_within_factor']} of {f['n_tasks']} tasks and picks "
            f"the best expert itself for {f['n_best_chosen']}. The symmetric distance's pick has a median ratio of "
            f"{f['sym_ratio_median']:.2f}, Model2Vec's {f['m2v_ratio_median']:.2f} (the best expert for "
            f"{f['m2v_n_best']} tasks), a random pick {f['random_ratio_median']:.2f}. The paper's finding that "
            f"Task2Vec's expert is close to the best **{HOLDS[f['within_factor']]}** by the median; that it improves "
            f"on an uninformed choice **{HOLDS[f['beats_random']]}**.")


def norm_finding(f: dict[str, Any]) -> str:
    """Sec. 4's second claim in a sentence: the embedding's norm grows with the task's difficulty (test error)."""
    return (f"Spearman correlation between norm and test error: {f['norm_error_spearman']:.2f} over all "
            f"{f['n_tasks']} tasks (p = {f['norm_error_p']:.3f}), {f['norm_error_spearman_objects']:.2f} over the "
            f"object-world tasks alone (p = {f['norm_error_p_objects']:.3f}). The paper's finding that the norm "
            f"tracks difficulty **{HOLDS[f['norm_tracks_error']]}** here.")


def beside_summary(side: pd.DataFrame) -> str:
    """`paper_beside`'s table in a sentence: how many of the paper's findings are tested, which agree, and the
    study's numbers where they do not."""
    tested = side.dropna(subset=["agrees"])
    yes = tested.loc[tested["agrees"].astype(bool), "finding"].tolist()
    no = tested.loc[~tested["agrees"].astype(bool), "finding"].tolist()
    return (f"Of the {len(side)} findings the sources state (none with a number), the study tests {len(tested)} "
            f"and agrees with {len(yes)}" + (f" ({', '.join(yes)})" if yes else "")
            + (f"; it does not agree on {', '.join(no)}: " + "; ".join(side.set_index("finding").loc[no, "study"])
               + " (why: below)" if no else "") + ".")
