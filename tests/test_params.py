"""Params: validation, overrides, and one clear error per kind of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskstudy.engine import params as P
from taskstudy.engine import sections as S


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "prof.yaml"
    p.write_text(text)
    return p


def test_profiles_in_repo_validate(repo_root):
    for name in ("default", "smoke", "gpu", "taskonomy"):
        sp = P.load(repo_root / "params" / f"{name}.yaml")
        assert sp.profile == name
        assert "overview" in sp.sections


def test_override_changes_value_and_parses_yaml(repo_root):
    sp = P.load(repo_root / "params/smoke.yaml", ["common.image_size=24", "overview.packages=[a, b]"])
    assert sp.common.image_size == 24
    assert sp.values("overview")["packages"] == ["a", "b"]


def test_unknown_key_names_file_key_and_suggestion(tmp_path):
    p = write(tmp_path, "common:\n  image_sise: 32\n")
    with pytest.raises(P.ParamsError) as e:
        P.load(p)
    msg = str(e.value)
    assert str(p) in msg and "common.image_sise" in msg and "did you mean 'image_size'" in msg
    assert "\n" not in msg


def test_unknown_override_key(repo_root):
    with pytest.raises(P.ParamsError, match=r"unknown key 'overview.pakages'.*did you mean 'packages'"):
        P.load(repo_root / "params/smoke.yaml", ["overview.pakages=[x]"])


def test_unknown_section_suggests(tmp_path):
    with pytest.raises(P.ParamsError, match=r"unknown section 'overveiw'.*did you mean 'overview'"):
        P.load(write(tmp_path, "overveiw: {}\n"))


def test_wrong_type_names_key(tmp_path):
    with pytest.raises(P.ParamsError, match=r"'common.seed'.*integer.*'abc'"):
        P.load(write(tmp_path, "common:\n  seed: abc\n"))


@pytest.mark.parametrize("override", ["common.image_size=7", "common.workers=-1", "common.n_test=0"])
def test_out_of_range(repo_root, override):
    with pytest.raises(P.ParamsError, match=override.split("=")[0]):
        P.load(repo_root / "params/smoke.yaml", [override])


def test_missing_file(tmp_path):
    with pytest.raises(P.ParamsError, match="params file not found"):
        P.load(tmp_path / "nope.yaml")


def test_malformed_yaml_names_line(tmp_path):
    p = write(tmp_path, "common:\n  seed: 0\n image_size: [32\n")
    with pytest.raises(P.ParamsError, match=r"prof.yaml: line \d+ malformed YAML"):
        P.load(p)


def test_bad_override_syntax(repo_root):
    with pytest.raises(P.ParamsError, match="expected section.key=value"):
        P.load(repo_root / "params/smoke.yaml", ["seed"])


def test_notebook_section_model_from_parameters_cell(tmp_path, repo_root, monkeypatch):
    """A user's chapter without a pydantic model is validated against its notebook's parameters cell."""
    import shutil

    for d in ("notebooks", "params"):
        shutil.copytree(repo_root / d, tmp_path / d)
    (tmp_path / "_config.yml").write_text("")
    import nbformat

    nb = nbformat.read(tmp_path / "notebooks/00_overview.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source += '\npackages = ["torch"]'  # a user's chapter keeps its defaults in its parameters cell
    nbformat.write(nb, tmp_path / "notebooks/50_mine.ipynb")
    monkeypatch.setenv("TASKSTUDY_ROOT", str(tmp_path))
    sp = P.load(tmp_path / "params/smoke.yaml", ["mine.packages=[x]"])
    assert sp.values("mine")["packages"] == ["x"]
    with pytest.raises(P.ParamsError, match="'mine.packages'"):
        P.load(tmp_path / "params/smoke.yaml", ["mine.packages=3"])


def test_chapter_parameters_cells_hold_only_what_papermill_needs(repo_root):
    """A chapter with a section model reads its values from it: its parameters cell holds params_file and
    overrides only, so no default is written in a notebook (issue 19's drift)."""
    for name in S.SECTIONS:
        nbs = list((repo_root / "notebooks").glob(f"[0-9][0-9]_{name}.ipynb"))
        assert len(nbs) == 1, name
        assert set(P.notebook_defaults(nbs[0])) == set(P.RESERVED), name


def test_one_default_per_parameter(repo_root):
    """A chapter parameter's default lives in its section model (params.py); the default profile, which lists every
    value with its comment for the reader, gives each the same value: compared by value, not by name."""
    raw = P.read_yaml(repo_root / "params/default.yaml")
    profile = P.load(repo_root / "params/default.yaml")
    drift = []
    for name, model in S.SECTIONS.items():
        values = profile.values(name)
        assert set(raw.get(name) or {}) == set(model.model_fields), name  # the profile lists every value
        for key, field in model.model_fields.items():
            default = field.default.model_dump(mode="json") if hasattr(field.default, "model_dump") else field.default
            if default != values[key]:
                drift.append(f"{name}.{key}: params.py {default!r}, default.yaml {values[key]!r}")
    assert not drift, "\n".join(drift)


@pytest.mark.parametrize("overrides, key", [
    (["transfers.max_order=0"], "transfers.max_order"),
    (["transfers.max_order=3", "transfers.beam=2"], "exceeds 'transfers.beam'"),
    (["common.tasks=[normals, depth_zbuffer]", "transfers.beam=3", "transfers.max_order=2"], "number of tasks"),
])
def test_cross_section_errors(repo_root, overrides, key):
    with pytest.raises(P.ParamsError, match=key):
        P.load(repo_root / "params/smoke.yaml", overrides)


@pytest.mark.parametrize("overrides, key", [
    (["common.tasks=[normals, depht_zbuffer]"], "'common.tasks': unknown task 'depht_zbuffer'; did you mean 'depth_zb"),
    (["robustness.tasks=[normals, curvatur]"], "'robustness.tasks': unknown task 'curvatur'; did you mean 'curv"),
    (["robustness.variations={small: ['common.tasks=[normals, edge2]']}"], "'robustness.variations.small': unknown"),
])
def test_task_names_are_checked_against_the_dictionary(repo_root, overrides, key):
    """The profile's task names are checked by the task dictionary (world.tasks), not by the engine: the engine
    imports nothing of the world (issue 39, step 3), and `taskstudy run` checks them before any kernel starts."""
    from taskstudy.world import tasks as taskdict

    params = P.load(repo_root / "params/smoke.yaml", overrides)  # the engine knows types, not task names
    with pytest.raises(P.ParamsError, match=key):
        taskdict.check_profile(params)


@pytest.mark.parametrize("profile", ["gpu", "taskonomy", "smoke"])
def test_a_profile_holds_only_what_differs_from_the_defaults(profile: str) -> None:
    """Issue 39, item 4: a value a profile repeats from the section models' defaults is a second place to edit
    (and drifts); each profile file names only what it changes."""
    import yaml

    from taskstudy.engine import sections

    defaults = {"common": sections.Common().model_dump(),
                **{n: m().model_dump() for n, m in sections.SECTIONS.items()}}
    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "params" / f"{profile}.yaml").read_text())
    repeated = [f"{s}.{k}" for s, body in raw.items() if isinstance(body, dict) and s in defaults
                for k, v in body.items() if k in defaults[s] and defaults[s][k] == v]
    assert not repeated, f"params/{profile}.yaml repeats defaults: {repeated}"


def test_section_is_typed_per_name(repo_root) -> None:
    """Issue 39, item 4: `section("transfers")` is typed as the Transfers model (a type checker flags an attribute
    typo), for every chapter section there is; and it returns that model, whose attributes fail on a typo."""
    import typing

    typed = {}
    for ov in typing.get_overloads(P.StudyParams.section):
        hints = typing.get_type_hints(ov)
        (name,) = typing.get_args(hints["name"]) or (None,)
        if name is not None:
            typed[name] = hints["return"]
    assert typed == S.SECTIONS, "a section model without its overload of StudyParams.section (engine/params.py)"
    prof = P.load(repo_root / "params" / "default.yaml")
    assert all(type(prof.section(name)) is model for name, model in S.SECTIONS.items())
    with pytest.raises(AttributeError):
        prof.section("transfers").epoch  # noqa: B018
