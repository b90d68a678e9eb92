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
from typing import Any, Literal, overload

import yaml
from pydantic import BaseModel, ValidationError, create_model

from taskstudy.engine import sections as models
from taskstudy.engine.paths import find_root, notebooks_dir
from taskstudy.engine.sections import SECTIONS, Common, Section

# Names every notebook's parameters cell has besides its section's values; set by `taskstudy run`.
RESERVED = ("params_file", "overrides")


class ParamsError(ValueError):
    """A bad params file or override: the message names the file and the key."""


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

    @overload
    def section(self, name: Literal["overview"]) -> models.Overview: ...
    @overload
    def section(self, name: Literal["scenes"]) -> models.Scenes: ...
    @overload
    def section(self, name: Literal["task_networks"]) -> models.TaskNetworks: ...
    @overload
    def section(self, name: Literal["transfers"]) -> models.Transfers: ...
    @overload
    def section(self, name: Literal["affinity"]) -> models.Affinity: ...
    @overload
    def section(self, name: Literal["taxonomy"]) -> models.Taxonomy: ...
    @overload
    def section(self, name: Literal["novel_tasks"]) -> models.NovelTasks: ...
    @overload
    def section(self, name: Literal["task_tree"]) -> models.TaskTree: ...
    @overload
    def section(self, name: Literal["layer_transfer"]) -> models.LayerTransfer: ...
    @overload
    def section(self, name: Literal["task_grouping"]) -> models.TaskGrouping: ...
    @overload
    def section(self, name: Literal["task2vec"]) -> models.Task2Vec: ...
    @overload
    def section(self, name: Literal["agreement"]) -> models.Agreement: ...
    @overload
    def section(self, name: Literal["performance"]) -> models.Performance: ...
    @overload
    def section(self, name: Literal["robustness"]) -> models.Robustness: ...
    @overload
    def section(self, name: Literal["estimators"]) -> models.Estimators: ...
    @overload
    def section(self, name: Literal["adaptive"]) -> models.Adaptive: ...
    @overload
    def section(self, name: str) -> Section: ...

    def section(self, name: str) -> Section:
        """The chapter section `name`, as its model (typed per name: an attribute typo is a type error, and at run
        time pydantic's AttributeError); a user's chapter without a model here gets its notebook's."""
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


def _check_variations(raw: dict[str, Any], file: Path, overrides: tuple[str, ...], root: Path | None,
                      cfg: Any, where: str) -> None:
    """Every robustness variation must be a valid override of this profile (the task names of the base and of each
    variation are checked against the task dictionary by `taskstudy.world.tasks.check_profile`)."""
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
