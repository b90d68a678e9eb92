"""Taskonomy Step II's frozen representations (Zamir et al. 2018, Sec. 3.2): each source's encoder E_s (its Step I
network's, or the seeded random one), the query a transfer reads in the form each encoder was trained on, and
E_s(I) of every split computed once into the store (float16), one unit per source, never per epoch.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

import torch

from taskstudy.engine.codehash import computation_hash
from taskstudy.engine.parallel import run_units
from taskstudy.engine.store import Store
from taskstudy.nn.models import Encoder
from taskstudy.nn.train import predict, resolve_device
from taskstudy.taskonomy.task_networks import VERSION as NET_VERSION
from taskstudy.taskonomy.task_networks import build_network, network_key, unit_seed
from taskstudy.world import data
from taskstudy.world import tasks as taskdict

if TYPE_CHECKING:
    from taskstudy.engine.params import StudyParams


VERSION = "3"  # 2: val split (early stopping, selection), queries in the target's and the encoder's form;


#   3: readouts of a unit side by side, the batch order the target's
RANDOM = "random"  # a random-weight encoder, the paper's `random` source


SPLITS = ("transfer", "val", "test")  # readouts train on transfer, stop and are selected on val, judged on test


CORRUPTING = ("inpainting", "denoising")  # sources whose training input corrupts the image (see encoder_view)


def encoder_key(params: StudyParams, source: str) -> dict[str, Any]:
    """What determines a source's frozen encoder: its task network's key, or the seed of the random one."""
    if source == RANDOM:
        cfg = params.section("task_networks")
        return {"random": unit_seed(params.common.seed, "random_encoder"), "width": cfg.width, "depth": cfg.depth}
    return network_key(params.common, params.section("task_networks"), source)


def query_kind(target: str) -> str:
    """The form of a transfer's query image: the target's own input ("noisy" for denoising, else "rgb")."""
    return taskdict.get_task(target).input


def view_name(params: StudyParams, source: str) -> str:
    """How source `source`'s encoder reads a query (see encoder_view): "grey", "corrupted" or "plain"."""
    if source == RANDOM:
        return "plain"
    t = taskdict.get_task(source)
    if t.input == "grey":
        return "grey"
    if source in CORRUPTING:
        view = params.section("transfers").corrupted_view
        return view if isinstance(view, str) else view.get(source, "plain")
    return "plain"


def query_images(params: StudyParams, split: str, query: str) -> torch.Tensor:
    """The query images I of a split in form `query` ("rgb": clean; "noisy": denoising's noisy input)."""
    d = data.scene_split(Store.for_params(params), params.common, split)
    if query == "rgb":
        return data.rgb(d)
    task = next(t for t in taskdict.TASKS.values() if t.input == query)
    return data.network_input(params.common, d, task.name)


def encoder_view(params: StudyParams, source: str, split: str, query: str) -> torch.Tensor:
    """What E_s reads for queries of form `query`: the query in the form s was trained on. colorization: its
    grey image; inpainting (corrupted view): the centre masked; denoising (corrupted view): the clean query with
    the training noise added (a noisy query is left as it is); everything else: the query itself."""
    x = query_images(params, split, query)
    view = view_name(params, source)
    if view == "grey":
        return taskdict.make_input(source, x)
    if view == "corrupted":
        if source == "inpainting":
            return taskdict.make_input(source, x)
        if query == "rgb":
            d = data.scene_split(Store.for_params(params), params.common, split)
            return taskdict.make_input(source, x, index=d["index"], seed=data.split_seed(params.common))
    return x


def features_key(params: StudyParams, source: str, split: str, query: str = "rgb") -> dict[str, Any]:
    return {"encoder": encoder_key(params, source), "split": data.split_key(params.common, split), "query": query,
            "view": view_name(params, source), "code": computation_hash(_source_features)}


def frozen_encoder(params: StudyParams, source: str) -> Encoder:
    """The frozen encoder E_s of a source (its Step I network's, or the seeded random one), in eval mode."""
    cfg = params.section("task_networks")
    if source == RANDOM:
        torch.manual_seed(unit_seed(params.common.seed, "random_encoder"))
        return Encoder(cfg.width, cfg.depth).eval()
    saved = Store.for_params(params).load("task_network", encoder_key(params, source), NET_VERSION)
    if saved is None:
        raise LookupError(f"no task network for source '{source}': run chapter 02_task_networks first")
    net = build_network(source, cfg)
    net.load_state_dict(saved["state"])
    return net.encoder.eval()


def _source_features(unit: tuple[Any, str, tuple[tuple[str, str], ...]]) -> dict[tuple[str, str], torch.Tensor]:
    """E_s(I) of one source for each (split, query) asked (a unit of parallel.run_units), float16."""
    params, source, todo = unit
    encoder, device = frozen_encoder(params, source), resolve_device(params.common.device)
    return {(split, query): predict(encoder, encoder_view(params, source, split, query), device=device).half()
            for split, query in todo}


def cache_features(params: StudyParams, sources: list[str], queries: tuple[str, ...] = ("rgb",)) -> int:
    """E_s(I) of every source on the transfer, val and test splits, for every query form, computed once into the
    store (float16), one unit per source on the cluster's workers. Returns how many were computed now."""
    store = Store.for_params(params)
    wanted = tuple((split, query) for query in queries for split in SPLITS)

    def left(unit: tuple[Any, str, tuple[tuple[str, str], ...]]) -> tuple[Any, str, tuple[tuple[str, str], ...]] | None:
        todo = tuple(w for w in unit[2] if not store.exists("features", features_key(params, unit[1], *w), VERSION))
        return (unit[0], unit[1], todo) if todo else None

    def save(unit: tuple[Any, str, tuple[tuple[str, str], ...]], z: dict[tuple[str, str], torch.Tensor]) -> None:
        for (split, query), zs in z.items():
            store.save("features", features_key(params, unit[1], split, query), {"z": zs}, VERSION, fmt="pt")

    ran = run_units(_source_features, [(params, s, wanted) for s in sources], store=store, kind="features",
                    key=lambda u: {"encoder": encoder_key(params, u[1]), "view": view_name(params, u[1])},
                    version=VERSION, save=save, common=params.common, left=left, desc="Step II: frozen features")
    return sum(len(u[2]) for u in ran)


@lru_cache(maxsize=96)
def _features(root: str, key_items: str, split: str) -> torch.Tensor:
    import json

    z = Store(root).load("features", json.loads(key_items), VERSION)
    if z is None:
        raise LookupError(f"features missing from the store ({split}); call cache_features first")
    return z["z"].float()


def feature_keys(params: StudyParams, sources: tuple[str, ...], split: str, query: str = "rgb") -> tuple[str, ...]:
    """The store keys (as JSON text) of `sources`' cached representations on a split, in the order
    `load_keyed` concatenates them: derived once by a caller and handed down to where the features are read."""
    import json

    return tuple(json.dumps(features_key(params, s, split, query), sort_keys=True) for s in sorted(sources))


def load_keyed(root: str, keys: tuple[str, ...], split: str) -> torch.Tensor:
    """The cached representations under `keys` (`feature_keys`) in the store at `root`, concatenated on
    channels: (N, k * 4w, H/4, W/4)."""
    parts = [_features(root, k, split) for k in keys]
    return torch.cat(parts, 1) if len(parts) > 1 else parts[0]


def load_features(params: StudyParams, sources: tuple[str, ...], split: str, query: str = "rgb") -> torch.Tensor:
    """Concatenated cached representations of `sources` on a split for queries of form `query`:
    (N, k * 4w, H/4, W/4)."""
    return load_keyed(str(Store.for_params(params).root), feature_keys(params, sources, split, query), split)
