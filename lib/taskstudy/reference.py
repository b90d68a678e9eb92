"""The papers' published numbers, all under reference/ and all read by `read_reference`: the findings that come
as claims rather than tables (claims.csv), Standley et al.'s best grouping of their five-task example
(standley2020_best_grouping.csv), and the tables the chapters read through their own named loaders
(taskonomy/: `taskstudy.taskonomy.tree.load_paper_affinities`, `taskonomy_novel_wins`, `taskonomy_gain_quality`;
Yosinski et al.'s curves: `taskstudy.yosinski.findings.load_paper_curves`).

Every claim is stated as its source states it (the seed reviews in the project's shared folder), with the paper's
section or figure, the number where the source gives one, and the source itself; reference/README.md says where
each file comes from.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from taskstudy.engine.paths import reference_dir

CLAIM_COLUMNS = ["chapter", "finding", "paper", "where", "claim", "number", "source"]
GROUPING_COLUMNS = ["budget", "network", "size", "cost", "task", "paper_task", "serves"]


def read_reference(name: str, folder: str | Path | None = None, **read_csv: Any) -> pd.DataFrame:
    """One CSV of the papers' numbers: `name` under reference/ (or $TASKSTUDY_REFERENCE, or `folder`), with a clear
    error when it is missing; `read_csv` passes on to pandas (empty cells are NaN, "NA" is text)."""
    path = Path(folder if folder is not None else reference_dir()) / name
    if not path.is_file():
        raise FileNotFoundError(f"paper reference file {path} not found; set TASKSTUDY_REFERENCE to the folder "
                                f"holding {name}")
    return pd.read_csv(path, **({"keep_default_na": False, "na_values": [""]} | read_csv))


def taskonomy_novel_wins() -> pd.DataFrame:
    """Zamir et al. 2018, Table 2 (seed 004): the win rate (0-1) of the taxonomy's transfer against each method, per
    novel task (rows), the methods as the paper names them (columns)."""
    return read_reference("taskonomy/novel_task_wins.csv", index_col=0) / 100


def taskonomy_gain_quality() -> pd.DataFrame:
    """Zamir et al. 2018, Fig. 9 (seed 004's table): per target task and max transfer order, Gain and Quality at one
    supervision budget, tidy: task (study name, None where the study has no counterpart), paper_task, metric
    (gain/quality), order, value."""
    wide = read_reference("taskonomy/gain_quality_by_order.csv")
    rows = [{"task": None if r["task"] == "-" else r["task"], "paper_task": r["paper_task"], "metric": metric,
             "order": k, "value": float(r[f"{metric}_{k}"])}
            for _, r in wide.iterrows() for metric in ("gain", "quality") for k in range(1, 5)]
    return pd.DataFrame(rows)


def claims(chapter: str | None = None) -> pd.DataFrame:
    """The papers' claims (columns CLAIM_COLUMNS), all of them or one chapter's (e.g. "09_task2vec"), indexed by
    finding. `number` is the number the source states, as text, or NaN where it states none."""
    df = read_reference("claims.csv")
    if chapter is not None:
        df = df[df["chapter"] == chapter]
        if df.empty:
            raise KeyError(f"no claims for chapter {chapter!r} in claims.csv")
    return df.set_index("finding", drop=False)


def standley_best_grouping() -> pd.DataFrame:
    """Standley et al.'s lowest-total-loss networks for their five tasks at 2.5 budget units (columns
    GROUPING_COLUMNS): one row per (network, task), `task` in the study's names, `serves` False where the
    source calls the task's decoder in that network removable (the task is served by another network)."""
    df = read_reference("standley2020_best_grouping.csv")
    df["serves"] = df["serves"].astype(str).str.lower().map({"true": True, "false": False})
    return df


def beside(chapter: str, paper_label: str, study: Mapping[str, tuple[str, bool | None]]) -> pd.DataFrame:
    """A chapter's claims beside the study's findings: one row per claim the study addresses (`study`: finding ->
    (what the study found, as text; whether it agrees, None where not tested)). Columns: finding, `paper_label`
    (the claim), where, paper's number ("not in the sources" where the source states none), study, agrees."""
    paper = claims(chapter)
    return pd.DataFrame([
        {"finding": k, paper_label: paper.at[k, "claim"], "where": paper.at[k, "where"],
         "paper's number": "not in the sources" if pd.isna(paper.at[k, "number"]) else paper.at[k, "number"],
         "study": study[k][0], "agrees": study[k][1]}
        for k in paper.index if k in study])


# --- the findings page: every claim of claims.csv beside what the study found ---------------------------------

VERDICTS = ("reproduced", "not reproduced", "within noise", "not tested", "setting")


def verdict_of(agrees: bool | None) -> str:
    """A beside table's `agrees` as the findings page's verdict."""
    return "not tested" if agrees is None or pd.isna(agrees) else ("reproduced" if agrees else "not reproduced")


def glue_finding(finding: str, study: str, verdict: str) -> None:
    """Glue one claim's study cell and verdict (`finding_<finding>_study`, `finding_<finding>_verdict`) into the
    running chapter, for the findings page (book/findings.md)."""
    from myst_nb import glue

    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
    glue(f"finding_{finding}_study", study, display=False)
    glue(f"finding_{finding}_verdict", verdict, display=False)


def glue_beside(table: pd.DataFrame) -> None:
    """glue_finding for every row of a `beside` table (its `verdict` column where it has one, else `agrees`)."""
    for _, row in table.iterrows():
        verdict = row["verdict"] if "verdict" in table.columns else verdict_of(row["agrees"])
        glue_finding(row["finding"], str(row["study"]), verdict)


def _cell(text: object) -> str:
    return "" if pd.isna(text) else str(text).replace("|", "\\|").replace("\n", " ")


def findings_page() -> str:
    """book/findings.md: per paper, one row per claim of claims.csv (where, the claim, the paper's number) with the
    study's finding and verdict glued from the chapter that computed them. tests/test_pages.py checks that the
    committed page is this text."""
    df = claims()
    out = ["# Findings, paper by paper", "",
           "Every finding the papers state (as the reviews this study works from state it, `reference/claims.csv`),",
           "beside what this study's run found and the verdict the chapter reached against its own noise:",
           "*reproduced*, *not reproduced*, *within noise* (the difference is inside the study's seed band or",
           "bootstrap interval), *not tested*, or *setting* (a description of the paper's setup, scaled down here).",
           "Each study cell and verdict is glued from the executed chapter named in the row.", ""]
    for paper, rows in df.groupby("paper", sort=False):
        out += [f"## {paper}", "", "| finding | where | the paper | paper's number | study | verdict | chapter |",
                "|---|---|---|---|---|---|---|"]
        for _, r in rows.iterrows():
            nb = f"chapters/{r['chapter']}.ipynb"
            out.append(f"| {r['finding']} | {_cell(r['where'])} | {_cell(r['claim'])} | {_cell(r['number'])} | "
                       f"{{glue:text}}`{nb}::finding_{r['finding']}_study:s` | "
                       f"{{glue:text}}`{nb}::finding_{r['finding']}_verdict:s` | {{doc}}`{r['chapter']} <{nb[:-6]}>` |")
        out.append("")
    return "\n".join(out)
