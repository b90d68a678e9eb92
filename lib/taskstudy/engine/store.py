"""The results store: content-addressed entries under results/<profile>/<name>/.

An entry's key is the hash of its name, a version tag and every parameter that determines it. The data file
(`<key>.pt|.npz|.parquet|.json`) is written to a temporary file and renamed into place; a sidecar
`<key>.json.meta` written after it records the sha256, the parameters and the version. A read checks the
checksum: a missing or mismatching sidecar means the entry is incomplete or corrupt, it is reported, removed
and recomputed, never used. A file lock per key makes sure two processes never compute or write one entry at
the same time: the second waits and then reads what the first wrote.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import filelock
import numpy as np
import pandas as pd
import torch

from taskstudy.engine import faults
from taskstudy.engine.paths import owner_tag

if TYPE_CHECKING:
    from taskstudy.engine.params import StudyParams

log = logging.getLogger(__name__)

FORMATS = ("pt", "npz", "parquet", "json")


class CorruptEntry(RuntimeError):
    """An entry whose data does not match its recorded checksum."""


def stable_hash(obj: Any, n: int = 20) -> str:
    """sha256 of the canonical JSON of `obj` (sorted keys), hex, first n characters."""
    text = json.dumps(obj, sort_keys=True, default=_jsonable, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def _jsonable(x: Any) -> Any:
    if hasattr(x, "model_dump"):
        return x.model_dump(mode="json")
    if isinstance(x, (set, frozenset, tuple)):
        return sorted(x) if isinstance(x, (set, frozenset)) else list(x)
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"cannot hash parameter of type {type(x).__name__}: {x!r}")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _guess_format(obj: Any) -> str:
    if isinstance(obj, pd.DataFrame):
        return "parquet"
    if isinstance(obj, dict) and obj and all(isinstance(v, np.ndarray) for v in obj.values()):
        return "npz"
    return "pt"


def _encode(obj: Any, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "pt":
        torch.save(obj, buf)
    elif fmt == "npz":
        np.savez(buf, **obj)
    elif fmt == "parquet":
        obj.to_parquet(buf, index=False)
    elif fmt == "json":
        buf.write(json.dumps(obj, sort_keys=True, default=_jsonable).encode())
    else:
        raise ValueError(f"unknown store format '{fmt}' (one of {FORMATS})")
    return buf.getvalue()


def _numpy_globals() -> list[Any]:
    """What a pickled numpy array or scalar names: allowed beside torch's own tensors and containers."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    dtypes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")] if hasattr(np, "dtypes") else []
    return [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype, *dtypes]


# Allowed for every thread of the process, once: torch's safe_globals() context is not thread-safe (a thread
# leaving it drops the allowlist of another still loading).
torch.serialization.add_safe_globals(_numpy_globals())


class UnsafeEntry(ValueError):
    """An entry that names code (a class or function outside tensors, numbers, strings, containers, arrays)."""


def load_weights(source: Any) -> Any:
    """torch.load that runs no code (weights_only=True): tensors, numbers, strings, lists, dicts and numpy arrays.
    Anyone who can write into a results folder could otherwise run code in every process that reads it; an entry
    naming anything else raises UnsafeEntry. Used for the store's .pt entries and the training checkpoints."""
    import pickle

    try:
        return torch.load(source, weights_only=True)
    except pickle.UnpicklingError as e:
        named = re.search(r"(Unsupported global: GLOBAL \S+|but got <[^>]+>)", str(e))
        raise UnsafeEntry(f"refused to load {source}: it names code, not only data "
                          f"({named.group(1) if named else type(e).__name__})") from None


def _decode(path: Path, fmt: str) -> Any:
    if fmt == "pt":
        return load_weights(path)
    if fmt == "npz":
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    if fmt == "parquet":
        return pd.read_parquet(path)
    if fmt == "json":
        return json.loads(path.read_text())
    raise ValueError(f"unknown store format '{fmt}'")


def atomic_write(path: Path, data: bytes, fault: str | None = None) -> None:
    """Write bytes to `path` through a temporary file in the same folder and a rename; on any error
    (disk full included) the temporary file is removed and `path` is left as it was. `fault` names the
    `store.tmp` fault point between the fsync and the rename (taskstudy.engine.faults; for the reliability tests)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{owner_tag()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if fault is not None:
            faults.point("store.tmp", fault)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Store:
    """Content-addressed results store rooted at one folder (normally results/<profile>)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.stats: Counter[str] = Counter()  # "hit", "computed", "corrupt" per process, for tests and logs

    @classmethod
    def for_params(cls, params: StudyParams) -> Store:
        """The store of a StudyParams' profile."""
        return cls(params.results_root())

    def key(self, name: str, params: Mapping[str, Any], version: str = "1") -> str:
        return stable_hash({"name": name, "version": version, "params": params})

    def _paths(self, name: str, key: str) -> tuple[Path, Path]:
        folder = self.root / name
        return folder / f"{key}.meta.json", folder / f"{key}.lock"

    def _data_path(self, name: str, key: str, fmt: str) -> Path:
        return self.root / name / f"{key}.{fmt}"

    def exists(self, name: str, params: Mapping[str, Any], version: str = "1") -> bool:
        meta_path, _ = self._paths(name, self.key(name, params, version))
        return meta_path.is_file()

    def load(self, name: str, params: Mapping[str, Any], version: str = "1") -> Any | None:
        """The stored object, or None when missing; a corrupt entry is reported, removed and gives None."""
        key = self.key(name, params, version)
        meta_path, _ = self._paths(name, key)
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            data_path = self._data_path(name, key, meta["format"])
            digest = file_sha256(data_path)
            if digest != meta["sha256"]:
                raise CorruptEntry(f"checksum mismatch ({digest[:12]} != {meta['sha256'][:12]})")
            obj = _decode(data_path, meta["format"])
        except UnsafeEntry as e:  # written by another hand: never unpickled, recomputed
            self.stats["unsafe"] += 1
            log.warning("store entry %s/%s %s: recomputing", name, key, e)
            self.remove(name, key)
            return None
        except Exception as e:  # noqa: BLE001 - any unreadable entry is recomputed
            self.stats["corrupt"] += 1
            log.warning("store entry %s/%s is corrupt (%s): recomputing", name, key, e)
            self.remove(name, key)
            return None
        self.stats["hit"] += 1
        return obj

    def save(
        self, name: str, params: Mapping[str, Any], obj: Any, version: str = "1", fmt: str | None = None
    ) -> Path:
        """Write an entry atomically: data file first, then the sidecar with its checksum."""
        fmt = fmt or _guess_format(obj)
        key = self.key(name, params, version)
        data = _encode(obj, fmt)
        data_path = self._data_path(name, key, fmt)
        atomic_write(data_path, data, fault=name)
        faults.point("store.sidecar", name)  # a no-op unless the reliability tests kill the run here
        meta = {
            "name": name,
            "key": key,
            "version": version,
            "format": fmt,
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "params": params,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        meta_path, _ = self._paths(name, key)
        atomic_write(meta_path, json.dumps(meta, sort_keys=True, indent=1, default=_jsonable).encode())
        return data_path

    def remove(self, name: str, key: str) -> None:
        meta_path, _ = self._paths(name, key)
        meta_path.unlink(missing_ok=True)
        for fmt in FORMATS:
            self._data_path(name, key, fmt).unlink(missing_ok=True)

    def lock(self, name: str, params: Mapping[str, Any], version: str = "1") -> filelock.FileLock:
        _, lock_path = self._paths(name, self.key(name, params, version))
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        return filelock.FileLock(lock_path)

    def get_or_compute(
        self,
        name: str,
        params: Mapping[str, Any],
        compute: Callable[[], Any],
        version: str = "1",
        fmt: str | None = None,
    ) -> Any:
        """The entry for (name, params, version): read if valid, else computed once under the key's lock."""
        obj = self.load(name, params, version)
        if obj is not None:
            return obj
        with self.lock(name, params, version):
            obj = self.load(name, params, version)  # another process may have written it meanwhile
            if obj is not None:
                return obj
            obj = compute()
            self.save(name, params, obj, version, fmt)
            self.stats["computed"] += 1
            return obj

    def entries(self, name: str | None = None) -> list[dict[str, Any]]:
        """The sidecars of every entry (of one name), for listings."""
        pattern = f"{name}/*.meta.json" if name else "*/*.meta.json"
        return [json.loads(p.read_text()) for p in sorted(self.root.glob(pattern))]
