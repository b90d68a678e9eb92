"""Study parameters: one YAML file per profile (params/default.yaml, smoke.yaml, gpu.yaml).

A profile has a `common` section and one section per chapter (chapter `NN_name` reads section `name`).
Every section is validated by a pydantic model before any kernel starts; a chapter added by a user without a
model here is validated against its notebook's `parameters` cell (names and types of its defaults).
Overrides are dotted, `section.key=value`, the value parsed as YAML (`-p transfers.epochs=20`).
"""

from __future__ import annotations

import ast
import difflib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from taskstudy.engine.paths import find_root, notebooks_dir

# Names every notebook's parameters cell has besides its section's values; set by `taskstudy run`.
RESERVED = ("params_file", "overrides")


class ParamsError(ValueError):
    """A bad params file or override: the message names the file and the key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Cluster(Section):
    address: str | None = None  # an existing Dask scheduler ("tcp://host:8786"); None = local


class Common(Section):
    seed: int = 0  # every random draw of the study derives from this seed
    split_seed: int | None = None  # seed of the rendered scene splits; None = `seed` (set it to vary one alone)
    image_size: int = Field(32, ge=16, le=256)  # scene images are image_size x image_size pixels
    n_train: int = Field(2000, ge=1)  # scenes in the task-network (Step I) split
    n_transfer: int = Field(400, ge=1)  # scenes in the transfer (Step II readout) split, smaller as in the paper
    n_val: int = Field(500, ge=1)  # scenes in the val split: early stopping, beam search, AHP, BIP (selection)
    n_test: int = Field(500, ge=1)  # scenes in the test split: Gain, Quality, significance (evaluation only)
    val_stop_images: int | None = Field(256, ge=8)  # early stopping reads the first N val images; None = all
    tasks: list[str] | None = None  # dictionary tasks to study; None = every task of taskstudy.world.tasks
    workers: int = Field(0, ge=0)  # 0 = run units in-process; n > 0 = a Dask LocalCluster of n workers
    cluster: Cluster = Cluster()  # scale-out to an existing Dask scheduler
    device: str = "cpu"  # torch device for training ("cpu", "cuda", "auto")
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # training forward passes: fp32, or bfloat16 autocast;
    # ^ auto: bf16 where the CPU runs it natively (AVX512-BF16, AMX), fp32 elsewhere (train.resolve_kernels)
    channels_last: bool | Literal["auto"] = "auto"  # training batches in NHWC layout; auto: where it is faster
    results_dir: str = "results"  # the results store, relative to the study root; entries under <dir>/<profile>/
    dataset: Literal["scenes", "taskonomy"] = "scenes"  # Steps I-IV on rendered scenes, or on Taskonomy folders
    taskonomy_root: str | None = None  # with dataset taskonomy: the folder (absolute, or relative to the study root)

    @model_validator(mode="after")
    def _taskonomy_needs_root(self) -> Common:
        if self.dataset == "taskonomy" and not self.taskonomy_root:
            raise ValueError("common.dataset is 'taskonomy': set common.taskonomy_root to the Taskonomy folder")
        return self


class Overview(Section):
    packages: list[str] = ["torch", "torchvision", "numpy", "pandas", "papermill", "jupyter-book", "pulp", "dask"]
    # ^ packages whose installed versions the overview chapter lists


class Scenes(Section):
    n_show: int = Field(3, ge=1)  # scenes shown in each gallery of task labels
    learnability_sizes: list[int] = [1024, 2048]  # object-world training-set sizes of the learnability table


class TaskNetworks(Section):
    width: int = Field(16, ge=1)  # encoder width w: stages of w, 2w, 4w channels; representation (4w, H/4, W/4)
    depth: int = Field(1, ge=1)  # BasicBlocks per encoder stage
    decoder_width: int = Field(32, ge=1)  # channels of the task decoders
    epochs: int = Field(16, ge=1)  # at most this many passes over the train split (the cosine's length)
    patience: int = Field(3, ge=1)  # early stopping: epochs without a better val loss before training stops
    batch_size: int = Field(32, ge=1)  # images per step
    lr: float = Field(2e-3, gt=0)  # Adam learning rate
    n_show: int = Field(3, ge=1)  # test scenes whose predictions the chapter shows
    check_epochs: int = Field(32, ge=0)  # convergence check: check_tasks retrained this long (patience scaled); 0 = off
    check_tasks: list[str] = ["edge2d", "normals"]  # the networks the convergence check retrains


class Transfers(Section):
    readout_width: int = Field(16, ge=1)  # channels of each readout D_{s->t}
    epochs: int = Field(32, ge=1)  # at most this many passes over the transfer split per readout
    patience: int = Field(4, ge=1)  # early stopping of readouts and scratch networks on the val split
    batch_size: int = Field(64, ge=1)  # images per step
    lr: float = Field(1e-2, gt=0)  # Adam learning rate of the readouts
    max_order: int = Field(3, ge=1, le=4)  # highest transfer order k (sources per readout)
    beam: int = Field(3, ge=1)  # top-b first-order sources per target (by val score) whose k-combinations are tried
    scratch_epochs: int = Field(32, ge=1)  # at most this many epochs of the from-scratch network (Gain's reference)
    corrupted_view: Literal["plain", "corrupted"] | dict[Literal["inpainting", "denoising"],
                                                         Literal["plain", "corrupted"]] = "plain"
    # ^ what the encoders of inpainting and denoising read: the query as it is, or corrupted as in their training;
    #   one view for both, or one per encoder (an encoder left out reads the plain query). Chosen on val (chapter 03)
    readout: Literal["shuffle", "decoder"] = "shuffle"
    # ^ the readout: two convs + pixel shuffle, or the paper's two-conv neck + the task's full decoder (chapter 03)
    schedule: Literal["cosine", "plateau"] = "cosine"
    # ^ the readouts' rate: a cosine over `epochs`, or divided by 10 on val plateaus (annealed wherever it stops)


class Performance(Section):
    quick: bool = False  # fewer sizes and repeats in the benchmark suite
    bench_scenes: int = Field(512, ge=1)  # scenes rendered per repeat to measure throughput (at 32 px)
    bench_sizes: list[int] = [32, 64, 128]  # image sizes whose throughput the renderer's benchmark reports
    bench_repeats: int = Field(2, ge=1)  # repeats of each throughput measurement (min/median/max)


class Affinity(Section):
    max_order: int = Field(3, ge=1, le=4)  # highest order of source sets in the affinity matrix (capped by transfers)
    example_targets: list[str] = ["normals", "segment_semantic"]  # targets whose win matrices are shown


class Taxonomy(Section):
    budgets: list[int] = [1, 2, 3, 4, 6, 8, 12, 16]  # supervision budgets (source tasks) of the tables and tests
    orders: list[int] = [1, 2, 3]  # max transfer orders compared (capped by transfers.max_order)
    graph_budgets: list[int] = [2, 6]  # budgets whose taxonomies are drawn as graphs
    graph_orders: list[int] = [1, 3]  # orders whose taxonomies are drawn as graphs
    n_random: int = Field(100, ge=1)  # random feasible policies per budget (significance, Fig. 11)
    seed_offset: int = 0  # added to common.seed for drawing the random policies
    significance_order: int = Field(1, ge=1, le=4)  # max order of the policies in the significance test


class NovelTasks(Section):
    imagenet_epochs: int = Field(15, ge=1)  # epochs (cosine schedule) of the ImageNet-like classifier, or fewer
    imagenet_patience: int = Field(3, ge=1)  # epochs without a better validation loss before it stops
    imagenet_n_images: int = Field(3200, ge=32)  # pretrain-world images it trains on (32 balanced classes)
    max_order: int = Field(3, ge=1, le=4)  # highest transfer order the novel taxonomy may use (capped by transfers)
    budget: int = Field(0, ge=0)  # dictionary tasks the novel taxonomy may supervise; 0 = all of them


class TaskTree(Section):
    method: str = "average"  # scipy linkage method
    metric: str = "correlation"  # scipy pdist metric between the tasks' affinity columns
    n_groups: int = Field(4, ge=2)  # groups the tree is cut into (the paper's four)


class LayerTransfer(Section):
    dataset: Literal["objects", "cifar100"] = "objects"  # the study's object world, or a real CIFAR-100 copy
    cifar_root: str | None = None  # folder holding cifar-100-python/ (relative to the study root); for cifar100
    n_images: int = Field(4096, ge=2)  # training images, both halves A and B together
    n_val: int = Field(1024, ge=2)  # validation images (early stopping), both halves together
    n_test: int = Field(2048, ge=2)  # test images, both halves together
    image_size: int = Field(32, ge=16, le=256)  # pixels per side (objects rendered at it; CIFAR resized if not 32)
    layers: int = Field(7, ge=4)  # L: L-3 conv blocks, 2 hidden fully connected layers, the classifier
    width: int = Field(8, ge=1)  # channels of the first conv block (then 2x, 4x)
    hidden: int = Field(64, ge=1)  # units of each hidden fully connected layer
    epochs: int = Field(12, ge=1)  # passes over the target half: the cosine schedule's length (or stopped early)
    patience: int = Field(3, ge=1)  # epochs without a better validation loss before a net stops
    batch_size: int = Field(64, ge=1)  # images per step
    lr: float = Field(5e-3, gt=0)  # Adam learning rate (cosine decay over `epochs`)
    fine_tuned_n: list[int] = [2, 4, 6]  # n of the fine-tuned treatments BnB+ and AnB+; [] = every n
    check_epochs: int = Field(24, ge=0)  # the first seed's bases retrained on a schedule this long (0 = no check)
    seeds: int = Field(3, ge=1)  # repeats of every (split, treatment, n): the seed band of every curve


class TaskGrouping(Section):
    tasks: list[str] = ["segment_semantic", "depth_zbuffer", "normals", "keypoints2d", "edge2d"]
    # ^ every non-empty subset gets a full-size multi-task network, every task a half-size one
    width: int = Field(8, ge=1)  # full-size encoder width w (stages w, 2w, 4w); 1 budget unit = its MACs per image
    depth: int = Field(1, ge=1)  # BasicBlocks per encoder stage
    decoder_width: int = Field(16, ge=1)  # channels of each task decoder (not counted in the budget)
    epochs: int = Field(16, ge=1)  # at most (the cosine's length); early stopping on val decides
    patience: int = Field(5, ge=1)  # epochs without a better val loss before a network stops
    early_epoch: int = Field(3, ge=1)  # epoch after which val losses are recorded (early-stopping approximation)
    batch_size: int = Field(64, ge=1)  # images per step
    lr: float = Field(1e-2, gt=0)  # Adam learning rate (the lookahead takes Adam's step too)
    train_images: int = Field(500, ge=0)  # first images of the train split used (0 = all of n_train)
    lookahead_every: int = Field(5, ge=0)  # training steps between lookahead measurements (all-tasks network)
    seeds: int = Field(3, ge=1)  # every network trained with this many seeds: the seed band of every comparison
    equal_budget: bool = True  # Table 1: single-task networks of 1/k size, k = 3..N, beside the k-task networks
    settings: dict[str, dict[str, float]] = {  # the paper's other settings: name -> overrides of the values above
        "smaller network": {"width": 4},
        "less data": {"train_images": 125, "epochs": 24, "patience": 6}}
    setting_networks: Literal["pairs", "all"] = "pairs"  # what the other settings train: the full-size single-task
    # and pair networks (their Tables 2-4), or every candidate
    check_epochs: int = Field(32, ge=0)  # the control's first-seed single and all-tasks networks retrained this long
    image_size: int | None = Field(16, ge=16, le=256)  # the chapter's scenes rendered at this size (None: common's)


class Task2Vec(Section):
    images_train: int = Field(1920, ge=96)  # object-world images the heads and experts train on
    images_test: int = Field(960, ge=96)  # object-world images the test errors are measured on
    pretrain_images: int = Field(3200, ge=32)  # pretrain-world images the probe trains on (ImageNet's role)
    pretrain_val: int = Field(640, ge=32)  # pretrain-world images its early stopping reads
    scene_tasks: list[str] = ["class_scene", "class_object"]  # scene classification tasks added to the family
    probe_width: int = Field(8, ge=1)  # probe and expert encoders: stages of w, 2w, 4w channels
    probe_depth: int = Field(1, ge=1)  # BasicBlocks per encoder stage (probe and experts)
    probe_epochs: int = Field(15, ge=1)  # epochs (cosine schedule) of the probe on the pretrain classes, or fewer
    probe_patience: int = Field(3, ge=1)  # epochs without a better validation loss before the probe stops
    batch_size: int = Field(64, ge=1)  # images per step (probe and experts)
    lr: float = Field(3e-3, gt=0)  # Adam learning rate (probe and experts)
    head_wd: float = Field(1e-3, ge=0)  # L2 weight of the retrained linear heads
    head_steps: int = Field(50, ge=1)  # L-BFGS iterations of a linear head
    mc_samples: int = Field(1, ge=1)  # labels drawn from p(y|x) per image for the Fisher
    fisher_samples: int = Field(480, ge=0)  # at most this many training images per task enter its Fisher (0 = all)
    expert_width: int = Field(8, ge=1)  # encoder width of the experts
    expert_steps: int = Field(100, ge=1)  # optimiser steps of each expert (same compute for every task)
    alpha: float = Field(0.15, ge=0)  # weight of the complexity term of the asymmetric distance
    expert_factor: float = Field(1.5, ge=1)  # a pick within this factor of the best expert's error counts as good


class Agreement(Section):
    fisher_images: int = Field(480, ge=8)  # transfer-split images entering each dense task's Task2Vec Fisher
    head_steps: int = Field(200, ge=1)  # full-batch Adam steps of each dense Task2Vec head
    n_perm: int = Field(2000, ge=10)  # permutations behind each rank-correlation p-value


class Robustness(Section):
    tasks: list[str] = ["autoencoding", "edge2d", "keypoints2d", "depth_zbuffer", "normals", "reshading",
                        "curvature", "segment_semantic", "class_object"]  # the base's dictionary (a subset, for time)
    n_train: int | None = Field(None, ge=1)  # a smaller Step I split for the base; None = the main study's
    epochs: int | None = Field(None, ge=1)  # fewer Step I epochs for the base; None = the main study's
    seeds: list[int] = [1, 2]  # extra training seeds (common.seed, splits pinned): their spread is the yardstick
    variations: dict[str, list[str]] = {  # name -> dotted overrides on top of the base
        "smaller dictionary": ["common.tasks=[autoencoding, edge2d, keypoints2d, depth_zbuffer, normals, reshading, "
                               "segment_semantic, class_object]"],
        "readouts annealed on plateaus": ["transfers.schedule=plateau"]}
    budgets: list[int] = [1, 2, 3, 4]  # supervision budgets whose chosen source sets are compared (Jaccard)
    outside_dataset: Literal["objects", "cifar100"] = "objects"  # Sec. 5.1's outside set: object world or CIFAR-100
    outside_label: Literal["shape", "class"] = "shape"  # object world: 8 shapes or its 48 classes
    cifar_root: str | None = None  # folder holding cifar-100-python/ (relative to the study root); for cifar100
    outside_train: int = Field(2000, ge=16)  # outside images the linear probes are fitted on
    outside_test: int = Field(1000, ge=16)  # outside images the probe accuracy is measured on
    probe_grid: int = Field(2, ge=1)  # frozen features average-pooled to grid x grid cells before the probe
    probe_wd: float = Field(1e-3, ge=0)  # L2 weight of the linear probe
    probe_steps: int = Field(100, ge=1)  # L-BFGS iterations of the linear probe
    outside_targets: list[str] = ["class_object", "class_scene"]  # taxonomy rows compared with the outside ranking
    n_perm: int = Field(2000, ge=10)  # permutations behind the rank-correlation p-value


class Estimators(Section):
    max_samples: int = Field(8000, ge=16)  # (cell, label) samples per pair for LogME, H-score and the linear probe
    budgets: list[int] = [1, 2, 4, 8]  # supervision budgets of the BIP solved on each estimator's scores
    n_boot: int = Field(1000, ge=10)  # bootstrap resamples of the targets behind each agreement band
    taxonomy_boot: int = Field(200, ge=10)  # bootstrap resamples of the test images behind each Gain/Quality band
    variations: bool = True  # also on chapter 12's runs (its seeds and variations): do the standings hold?


# Section models of the study's own chapters; a user's new chapter needs none (see notebook_section_model).
SECTIONS: dict[str, type[Section]] = {
    "overview": Overview, "scenes": Scenes, "task_networks": TaskNetworks, "transfers": Transfers,
    "affinity": Affinity, "taxonomy": Taxonomy, "novel_tasks": NovelTasks, "task_tree": TaskTree,
    "layer_transfer": LayerTransfer, "task_grouping": TaskGrouping, "task2vec": Task2Vec,
    "agreement": Agreement, "performance": Performance, "robustness": Robustness, "estimators": Estimators,
}


@dataclass(frozen=True)
class StudyParams:
    """A validated profile: `common`, one model per chapter section, where it came from."""

    profile: str
    file: Path
    common: Common
    sections: dict[str, Section]
    overrides: tuple[str, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    root: Path | None = None  # the study root it was loaded under (results are found from it in workers)

    def section(self, name: str) -> Section:
        if name not in self.sections:
            raise ParamsError(f"{self.file}: no section '{name}'{_suggest(name, self.sections)}")
        return self.sections[name]

    def values(self, name: str) -> dict[str, Any]:
        """A chapter's own parameters as flat plain values (what papermill injects)."""
        return self.section(name).model_dump(mode="json")

    def as_dict(self) -> dict[str, Any]:
        out = {"profile": self.profile, "common": self.common.model_dump(mode="json")}
        out.update({k: v.model_dump(mode="json") for k, v in self.sections.items()})
        return out

    def with_overrides(self, *more: str) -> StudyParams:
        """The same profile with `more` dotted overrides after its own, validated again (a variation of a run)."""
        return load(self.file, [*self.overrides, *more])

    def results_root(self) -> Path:
        return (self.root or find_root()) / self.common.results_dir / self.profile

    def subset(self, *sections: str) -> StudyParams:
        """The same params with only the named chapter sections (small and picklable, for workers)."""
        keep = {k: v for k, v in self.sections.items() if k in sections}
        return StudyParams(self.profile, self.file, self.common, keep, self.overrides, {}, self.root)

    def digest(self, *sections: str) -> str:
        """A stable JSON text of `common` and the named sections (all when none), for hashing."""
        d = self.as_dict()
        keep = {"common", *(sections or self.sections)}
        return json.dumps({k: v for k, v in d.items() if k in keep}, sort_keys=True)


def _suggest(name: str, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{path}:{where} malformed YAML: {getattr(e, 'problem', e)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """`section.key=value` -> (["section", "key"], value parsed as YAML)."""
    if "=" not in text:
        raise ParamsError(f"override '{text}': expected section.key=value")
    key, _, value = text.partition("=")
    parts = key.strip().split(".")
    if len(parts) < 2 or not all(parts):
        raise ParamsError(f"override '{text}': expected section.key=value (e.g. transfers.epochs=20)")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return parts, parsed


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    out = json.loads(json.dumps(raw))  # deep copy of plain data
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ParamsError(f"override '{text}': '{p}' is not a section")
            node = nxt
        node[parts[-1]] = value
    return out


def notebook_section_model(section: str, root: Path | None = None) -> type[Section] | None:
    """A pydantic model built from the `parameters` cell of notebooks/NN_<section>.ipynb, or None."""
    for nb in sorted(notebooks_dir(root).glob(f"[0-9][0-9]_{section}.ipynb")):
        fields: dict[str, Any] = {}
        for name, value in notebook_defaults(nb).items():
            if name in RESERVED:
                continue
            typ: Any = Any if value is None else type(value)
            fields[name] = (typ, value)
        return create_model(f"Section_{section}", __base__=Section, **fields)
    return None


def notebook_defaults(path: Path) -> dict[str, Any]:
    """The names and literal default values of a notebook's `parameters` cell."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not cells:
        raise ParamsError(f"{path}: no cell tagged 'parameters'")
    out: dict[str, Any] = {}
    tree = ast.parse(cells[0].source)
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                raise ParamsError(
                    f"{path}: parameter '{node.targets[0].id}' must be a literal value"
                ) from None
    return out


def _format_error(path: Path | str, section: str, err: ValidationError, model: type[BaseModel]) -> str:
    msgs = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        key = f"{section}.{loc}" if loc else section
        if e["type"] == "extra_forbidden":
            msgs.append(f"unknown key '{key}'{_suggest(str(e['loc'][-1]), _field_names(model, e['loc']))}")
        else:
            got = e.get("input")
            msgs.append(f"'{key}': {e['msg']} (got {got!r})")
    return f"{path}: " + "; ".join(msgs)


def _field_names(model: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc[:-1]:
        sub = model.model_fields.get(str(part))
        ann = getattr(sub, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return list(model.model_fields)
        model = ann
    return list(model.model_fields)


def validate(raw: dict[str, Any], file: Path, overrides: Iterable[str] = (), root: Path | None = None,
             nested: bool = False) -> StudyParams:
    """Validate a raw profile (plus overrides) into StudyParams; ParamsError names the file and key. The
    robustness section's variations are overrides too: each is validated here, before any work."""
    overrides = tuple(overrides)
    where = f"{file} (with -p {' '.join(overrides)})" if overrides else str(file)
    data = apply_overrides(raw, overrides)
    profile = str(data.pop("profile", Path(file).stem))
    known_sections = _chapter_sections(root)
    common_raw = data.pop("common", {}) or {}
    try:
        common = Common.model_validate(common_raw)
    except ValidationError as e:
        raise ParamsError(_format_error(where, "common", e, Common)) from None
    sections: dict[str, Section] = {}
    for name in sorted(set(data) | set(known_sections)):
        model = SECTIONS.get(name) or (notebook_section_model(name, root) if name in known_sections else None)
        if model is None:
            raise ParamsError(
                f"{where}: unknown section '{name}' (no notebooks/NN_{name}.ipynb)"
                f"{_suggest(name, ['common', *known_sections])}"
            )
        body = data.get(name) or {}
        if not isinstance(body, dict):
            raise ParamsError(f"{where}: section '{name}' must be a mapping, got {body!r}")
        try:
            sections[name] = model.model_validate(body)
        except ValidationError as e:
            raise ParamsError(_format_error(where, name, e, model)) from None
    _check_tasks(common, where)
    _check_orders(common, sections, where)
    if not nested and "robustness" in sections:
        _check_variations(raw, file, overrides, root, sections["robustness"], where)
    return StudyParams(profile, Path(file), common, sections, overrides, raw, root or _root_or_none())


def _root_or_none() -> Path | None:
    try:
        return find_root()
    except Exception:
        return None


def _chapter_sections(root: Path | None) -> list[str]:
    try:
        nbs = sorted(notebooks_dir(root).glob("[0-9][0-9]_*.ipynb"))
    except Exception:
        return []
    return [p.stem[3:] for p in nbs]


def _check_tasks(common: Common, where: str) -> None:
    if common.tasks is None:
        return
    try:
        from taskstudy.world import tasks as taskdict
    except ImportError:  # the task dictionary is not built yet
        return
    valid = list(taskdict.TASKS)
    for t in common.tasks:
        if t not in taskdict.TASKS:
            raise ParamsError(f"{where}: 'common.tasks': unknown task '{t}'{_suggest(t, valid)}")


def _check_variations(raw: dict[str, Any], file: Path, overrides: tuple[str, ...], root: Path | None,
                      cfg: Any, where: str) -> None:
    """Every robustness variation must be a valid override of this profile, and the base's tasks real tasks."""
    _check_tasks(Common(tasks=list(cfg.tasks)), f"{where}: 'robustness.tasks'")
    for name, extra in cfg.variations.items():
        try:
            validate(raw, file, [*overrides, *extra], root, nested=True)
        except ParamsError as e:
            raise ParamsError(f"{where}: 'robustness.variations.{name}' is not a valid override: {e}") from None


def _check_orders(common: Common, sections: dict[str, Section], where: str) -> None:
    """Cross-section limits: a readout cannot combine more sources than the beam keeps, nor the beam keep more
    sources than there are tasks."""
    tr = sections.get("transfers")
    if tr is None:
        return
    if tr.max_order > tr.beam:
        raise ParamsError(f"{where}: 'transfers.max_order' ({tr.max_order}) exceeds 'transfers.beam' ({tr.beam}): "
                          "order-k transfers combine k of the beam's sources")
    n = len(common.tasks) if common.tasks else None
    if n is not None and tr.beam > n:
        raise ParamsError(f"{where}: 'transfers.beam' ({tr.beam}) exceeds the number of tasks in 'common.tasks' ({n})")


def load(path: str | Path, overrides: Iterable[str] = ()) -> StudyParams:
    """Read, override and validate a params file (relative paths are taken from the study root)."""
    p = Path(path)
    if not p.is_absolute() and not p.exists():
        p = find_root() / p
    return validate(read_yaml(p), p, overrides)


def chapter_params(params_file: str | Path, overrides: Iterable[str], section: str, **values: Any) -> StudyParams:
    """What a chapter notebook calls first: the profile and `taskstudy run`'s overrides (a hand run with papermill
    passes them as `-p overrides '["transfers.epochs=20"]'`); `values`: a user's chapter without a section model
    passes its parameters cell's values, which apply last. The chapter then reads `P.section(section)`."""
    extra = [f"{section}.{k}={json.dumps(v)}" for k, v in values.items()]
    return load(params_file, [*overrides, *extra])


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}, for tables of parameters."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
