"""Tables that describe a run of the study: its chapters, its parameters and its software environment."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

import pandas as pd

from taskstudy.book import catalog
from taskstudy.engine.params import StudyParams, flatten


def chapters_table(params: StudyParams) -> pd.DataFrame:
    """One row per chapter: its order, params section, upstream chapters and number of own parameters."""
    rows = []
    for c in catalog.chapters():
        rows.append({
            "chapter": c.name,
            "section": c.section,
            "reads results of": ", ".join(c.depends) or "-",
            "parameters": ", ".join(f"{k}={v}" for k, v in params.values(c.section).items()) or "-",
        })
    return pd.DataFrame(rows)


def params_table(params: StudyParams) -> pd.DataFrame:
    """Every parameter of the profile as (section, key, value), overrides applied."""
    rows = []
    for section, values in params.as_dict().items():
        if section == "profile":
            continue
        for key, value in flatten(values).items():
            rows.append({"section": section, "key": key, "value": str(value)})
    return pd.DataFrame(rows)


def environment_table(packages: list[str]) -> pd.DataFrame:
    """The machine and the installed versions of `packages` (a missing package is reported, not fatal)."""
    import torch

    rows = [
        ("python", sys.version.split()[0]),
        ("platform", platform.platform()),
        ("cpu cores", str(os.cpu_count())),
        ("torch threads", str(torch.get_num_threads())),
        ("cuda available", str(torch.cuda.is_available())),
    ]
    for name in packages:
        try:
            rows.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            rows.append((name, "not installed"))
    return pd.DataFrame(rows, columns=["component", "version"])


def run_records() -> pd.DataFrame:
    """The record of each chapter's last execution (book/_runs/*.json): wall time, CPU seconds (its kernel's and its
    units'), peak memory, profile, the `taskstudy run` it was part of ("run": that run's start time; "start",
    "end": the chapter's, in seconds since the epoch) and the machine it ran on with its kernels (`machine.summary`;
    None for a record older than that)."""
    import time

    from taskstudy.nn.machine import summary as machine_summary

    rows = []
    for c in catalog.chapters():
        rec = catalog.read_record(c)
        if rec is None:
            continue
        rows.append({"chapter": c.name, "profile": rec["profile"], "wall s": rec["wall_s"],
                     "CPU s": rec.get("cpu_s"), "peak memory MB": rec.get("peak_rss_mb"),
                     "finished": time.strftime("%Y-%m-%d %H:%M", time.localtime(rec["finished"])),
                     "run": rec.get("run"), "start": rec["started"], "end": rec["finished"],
                     "machine": machine_summary(rec["machine"]) if rec.get("machine") else None})
    return pd.DataFrame(rows, columns=["chapter", "profile", "wall s", "CPU s", "peak memory MB", "finished", "run",
                                       "start", "end", "machine"])
