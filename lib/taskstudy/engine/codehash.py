"""What a computation is, as a hash: the part of a store key that makes a stored result follow the code that made it
(issue 19, item 3).

`computation_hash(f, ...)` hashes the functions and classes that compute a result and everything of the package they
reach, read from the package's source files (nothing is imported): each definition's syntax tree with its docstrings,
its own name and its type hints left out, and every name in it that refers to the package's own function, class or
module-level value replaced by *that* definition's hash (a Merkle hash over the references). So editing a docstring
or a comment, renaming a function, moving it to another module or typing it changes no key; changing a statement, a
constant or a default anywhere in the reach of a computation changes the keys of that computation's results, and of
no other. The plumbing modules (the store, the parallel runner, paths, params, the pipeline), which move results but
do not compute them, count by name only, as do other libraries (their versions are in the environment,
constraints.txt). `source_hash` does the same for a chapter's cells: a chapter is stale when what it calls changes.
Keys survive a move of modules between packages (issue 39, step 1): nothing hashed names a module's dotted path
(a plumbing definition counts by its name, a module used as a value by its last name, the package's own imports
inside a function not at all: the names they bind count where they are used), the package is found from this
module's name rather than its folder, and syntax fields that only some Python versions have (`type_params`,
3.12+) are left out.
What is reached is what the code names: a method called on an argument counts through the code that made the
object (a unit's function builds or loads its networks itself), and code chosen by a string at run time
(getattr on a module, import_module) would not count; the library has none.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taskstudy.engine import hashcache

PACKAGE = __name__.split(".")[0]
ROOT = Path(__file__).resolve().parents[__name__.count(".") - 1]  # the package's folder, wherever this module sits
PLUMBING = frozenset((  # modules (by their last name, wherever they sit) that move results but do not compute them
    "store", "parallel", "paths", "faults", "errors", "params", "sections", "pipeline", "cli", "dask_plugin",
    "manifest", "codehash", "hashcache", "bookcheck", "machine"))
SKIPPED_FIELDS = frozenset(("type_params", "type_comment"))  # syntax fields not every supported Python has


def computation_hash(*objs: Any, n: int = 12) -> str:
    """The hash of what `objs` (the package's functions and classes) compute, with everything of the package they
    reach: the key part `code` of the results they make. Memoised until a file of the package changes."""
    return _memo(tuple(_symbol_of(o) for o in objs), _package_state())[:n]


def symbol_hash(module: str, name: str, n: int = 12) -> str:
    """computation_hash of the definition `name` of `module`, read from the package's files under `ROOT`."""
    return _memo(((module, name),), _package_state())[:n]


def source_hash(source: str, n: int = 12) -> str:
    """The hash of what a script (a chapter's cells) reaches of the package: every function, class and module-level
    value of the package its names refer to, after its own imports."""
    tree = ast.parse(source)
    scope = _Scope.of_imports([x for x in ast.walk(tree) if isinstance(x, (ast.Import, ast.ImportFrom))])
    state = _package_state()
    found = set()
    with _LOCK, _stored(state):
        for node in ast.walk(tree):
            if isinstance(node, (ast.Name, ast.Attribute)) and isinstance(node.ctx, ast.Load):
                ref = scope.lookup(node)
                if ref is not None and ref[0] == "symbol":
                    found.add(_symbol_hash(_definition(ref[1], ref[2]), state))
    return hashlib.sha256("\x00".join(sorted(found)).encode()).hexdigest()[:n]


def _symbol_of(obj: Any) -> tuple[str, str]:
    obj = getattr(obj, "__wrapped__", obj)  # functools.lru_cache, wraps: the function inside
    module, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not _own(module) or not qual or "<" in qual:
        raise TypeError(f"computation_hash takes the package's own top-level functions and classes, not {obj!r}")
    return module, qual


def _own(module: str) -> bool:
    return module == PACKAGE or module.startswith(PACKAGE + ".")


def _plumbing(module: str) -> bool:
    return _own(module) and module.rsplit(".", 1)[-1] in PLUMBING


def _as_text(kind: str, dotted: str) -> str:
    """A reference that is not hashed by content, as text: the package's own modules by their last name (so a move
    between packages is no change), other libraries by their full dotted name."""
    return f"{kind}:{dotted.rsplit('.', 1)[-1]}" if kind == "module" and _own(dotted) else f"{kind}:{dotted}"


def _module_file(module: str) -> Path | None:
    rel = Path(*module.split(".")[1:])
    for p in (ROOT / rel.with_suffix(".py"), ROOT / rel / "__init__.py") if rel.parts else (ROOT / "__init__.py",):
        if p.is_file():
            return p
    return None


@functools.lru_cache(maxsize=4)
def _package_files(root: Path) -> tuple[Path, ...]:
    return tuple(sorted(root.rglob("*.py")))


#: How long the package's file times are trusted before they are read again: every key of every stored result
#: asks for them (chapter 14 asked 96,000 times: 30 of its 137 CPU-seconds were `stat` calls), and an edit is
#: still seen within this time.
STATE_TTL_S = 1.0
_STATE: dict[str, tuple[float, tuple[Any, ...]]] = {}


def _package_state() -> tuple[Any, ...]:
    """The package's folder and its files' modification times: a memoised hash holds until one of them changes."""
    now, root = time.monotonic(), str(ROOT)
    seen = _STATE.get(root)
    if seen is not None and now - seen[0] < STATE_TTL_S:
        return seen[1]
    state = (root, *(p.stat().st_mtime_ns for p in _package_files(ROOT)))
    _STATE[root] = (now, state)
    return state


_MEMO: dict[tuple[tuple[tuple[str, str], ...], tuple[Any, ...]], str] = {}


_LOCK = threading.RLock()  # one walk at a time: a walk reads what others have hashed (a race would mix them)


def _memo(symbols: tuple[tuple[str, str], ...], state: tuple[Any, ...]) -> str:
    key = (symbols, state)
    if key not in _MEMO:
        with _LOCK, _stored(state):
            _MEMO[key] = hashlib.sha256("\x00".join(_symbol_hash(_definition(m, q), state) for m, q in symbols)
                                        .encode()).hexdigest()
    return _MEMO[key]


# ---- hashes kept between processes (engine/hashcache.py) ----------------------------------------------------
@functools.lru_cache(maxsize=4)
def _content_digest(state: tuple[Any, ...]) -> str:
    return hashcache.content_digest(ROOT, _package_files(ROOT))


_LOADED: set[tuple[Any, ...]] = set()


@contextmanager
def _stored(state: tuple[Any, ...]) -> Iterator[None]:
    """Within: the hashes stored for this package state are known; after: any new ones are stored."""
    digest = _content_digest(state)
    if state not in _LOADED:
        _LOADED.add(state)
        for k, v in hashcache.load(digest).items():
            _DONE.setdefault((tuple(k.split(":", 1)), state), v)  # type: ignore[arg-type]
    before = len(_DONE)
    yield
    if len(_DONE) > before:
        hashcache.save(digest, {f"{m}:{q}": v for ((m, q), st), v in _DONE.items() if st == state})


# ---- what a module file defines and imports ------------------------------------------------------------------
@dataclass
class _Module:
    name: str
    defs: dict[str, ast.AST] = field(default_factory=dict)  # qualified name -> its def
    values: dict[str, list[ast.stmt]] = field(default_factory=dict)  # module-level name -> its assignments
    scope: _Scope | None = None


@functools.lru_cache(maxsize=256)
def _index(path: Path, module: str, mtime_ns: int) -> _Module:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    m = _Module(module)

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                m.defs[prefix + node.name] = node
                if isinstance(node, ast.ClassDef):
                    visit(node.body, f"{prefix}{node.name}.")
            elif not prefix and isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    for name in ast.walk(t):
                        if isinstance(name, ast.Name):
                            m.values.setdefault(name.id, []).append(node)

    visit(tree.body, "")
    m.scope = _Scope.of_imports(tree.body, module)
    return m


def _module(module: str) -> _Module | None:
    path = _module_file(module)
    return _index(path, module, path.stat().st_mtime_ns) if path else None


@dataclass
class _Scope:
    """Names bound by imports: ("module", name) for a module of the package, ("symbol", module, name) for one of its
    definitions, ("external", dotted name) for other libraries; `module`: the module whose own names come next."""

    names: dict[str, tuple[str, ...]]
    module: str | None = None

    @staticmethod
    def of_imports(body: list[ast.stmt], module: str | None = None) -> _Scope:
        names: dict[str, tuple[str, ...]] = {}
        for node in body:
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname:
                        names[a.asname] = ("module", a.name) if _own(a.name) else ("external", a.name)
                    else:
                        top = a.name.split(".")[0]
                        names[top] = ("module", top) if _own(top) else ("external", top)
            elif isinstance(node, ast.ImportFrom) and node.module:
                base = node.module
                if node.level and module:  # a relative import
                    base = ".".join(module.split(".")[: -node.level] + [node.module])
                for a in node.names:
                    bound = a.asname or a.name
                    if not _own(base):
                        names[bound] = ("external", f"{base}.{a.name}")
                    elif _module_file(f"{base}.{a.name}") is not None:
                        names[bound] = ("module", f"{base}.{a.name}")
                    else:
                        names[bound] = ("symbol", base, a.name)
        return _Scope(names, module)

    def with_imports(self, node: ast.AST) -> _Scope:
        """This scope plus the imports inside a function's body."""
        inner = [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
        if not inner:
            return self
        return _Scope({**self.names, **_Scope.of_imports(inner, self.module).names}, self.module)

    def lookup(self, node: ast.AST) -> tuple[str, ...] | None:
        """What a name or an attribute chain refers to, or None (a local, a builtin)."""
        if isinstance(node, ast.Name):
            if node.id in self.names:
                return self.names[node.id]
            m = _module(self.module) if self.module else None
            if m is not None and (node.id in m.defs or node.id in m.values):
                return ("symbol", self.module, node.id)
            return None
        if isinstance(node, ast.Attribute):
            base = self.lookup(node.value)
            if base is None:
                return None
            if base[0] == "module":
                sub = f"{base[1]}.{node.attr}"
                return ("module", sub) if _module_file(sub) else ("symbol", base[1], node.attr)
            if base[0] == "external":
                return ("external", f"{base[1]}.{node.attr}")
        return None


# ---- the Merkle hash over the reference graph -------------------------------------------------------------------
Symbol = tuple[str, str]  # (module, qualified name) where the definition is


def _definition(module: str, name: str) -> Symbol | str:
    """Where `module.name` is defined (a re-export followed), or the text it counts as when it is not the package's
    code: the plumbing and other libraries by name, a module as a whole by name."""
    for _ in range(16):
        if _plumbing(module):
            return f"name:{name}"
        m = _module(module)
        if m is None:
            return f"missing:{name}"
        if name in m.defs or name in m.values:
            return (module, name)
        ref = m.scope.names.get(name) if m.scope else None
        if ref is None:
            return f"module:{name}" if _module_file(f"{module}.{name}") else f"missing:{name}"
        if ref[0] != "symbol":
            return _as_text(ref[0], ref[1])
        module, name = ref[1], ref[2]
    return f"missing:{name}"


@dataclass
class _Raw:
    """A definition's text with its references to the package's definitions as numbered holes."""

    text: str
    refs: list[Symbol]


_RAW: dict[tuple[Symbol, tuple[Any, ...]], _Raw] = {}  # by the package's state: holes follow other modules


def _raw(sym: Symbol, state: tuple[Any, ...]) -> _Raw:
    if (sym, state) not in _RAW:
        module, name = sym
        m = _module(module)
        assert m is not None, module
        nodes = [m.defs[name]] if name in m.defs else m.values[name]
        scope = m.scope or _Scope({}, m.name)
        dumper = _Dumper()
        parts = [dumper.dump(node, scope.with_imports(node)) for node in nodes]
        if "." in name and name.split(".")[0] in m.defs:  # a method: its class counts (bases, class values)
            parts.append(dumper.hole((module, name.split(".")[0])))
        _RAW[(sym, state)] = _Raw("|".join(parts), dumper.refs)
    return _RAW[(sym, state)]


class _Dumper:
    """ast.dump's text, but each name or attribute chain that refers to the package's own definition written as a
    hole for that definition's hash, other libraries' names as their full dotted names (an import alias is no
    change), every def and class without its docstring and its own name (a rename or a move is no change),
    arguments and returns without their type hints (typing a function is no change), the package's own imports
    inside a function as a bare marker (what they bind counts where it is used, so a move is no change) and no
    field that only some Python versions have."""

    def __init__(self) -> None:
        self.refs: list[Symbol] = []

    def hole(self, sym: Symbol) -> str:
        self.refs.append(sym)
        return f"\x01{len(self.refs) - 1}\x02"

    def dump(self, node: Any, scope: _Scope) -> str:
        if isinstance(node, ast.AST):
            if isinstance(node, (ast.Name, ast.Attribute)) and isinstance(node.ctx, ast.Load):
                ref = scope.lookup(node)
                if ref is not None:
                    d = _definition(ref[1], ref[2]) if ref[0] == "symbol" else _as_text(ref[0], ref[1])
                    return f"<{d}>" if isinstance(d, str) else self.hole(d)
            if isinstance(node, ast.ImportFrom) and (node.level or _own(node.module or "")) or \
                    isinstance(node, ast.Import) and all(_own(a.name) for a in node.names):
                return "OwnImport()"
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                body = node.body
                if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                        and isinstance(body[0].value.value, str):
                    body = body[1:]
                fields = [self.dump(body if f == "body" else getattr(node, f, None), scope)
                          for f in node._fields if f not in ("name", "returns", *SKIPPED_FIELDS)]
                return f"{type(node).__name__}(" + ",".join(fields) + ")"
            skip = ("annotation", *SKIPPED_FIELDS) if isinstance(node, ast.arg) else SKIPPED_FIELDS
            return f"{type(node).__name__}(" + ",".join(self.dump(getattr(node, f, None), scope)
                                                        for f in node._fields if f not in skip) + ")"
        if isinstance(node, list):
            return "[" + ",".join(self.dump(x, scope) for x in node) + "]"
        return repr(node)


_DONE: dict[tuple[Symbol, tuple[Any, ...]], str] = {}


def _fill(raw: _Raw, value: Any) -> str:
    parts = raw.text.split("\x01")
    out = [parts[0]]
    for p in parts[1:]:
        i, rest = p.split("\x02", 1)
        out.append(f"<{value(raw.refs[int(i)])}>{rest}")
    return "".join(out)


def _symbol_hash(root: Symbol | str, state: tuple[Any, ...]) -> str:
    """The hash of a definition: over the graph of definitions it reaches, dependencies first. Definitions that
    reach each other (recursion, a key function naming the unit it keys) form one strongly connected component,
    hashed as a whole from its members' texts (references inside it by qualified name), so the hash does not
    depend on where a walk entered the cycle."""
    import networkx as nx

    if isinstance(root, str):
        return root
    if (root, state) in _DONE:
        return _DONE[(root, state)]
    graph = nx.DiGraph()
    todo = [root]
    graph.add_node(root)
    while todo:
        sym = todo.pop()
        for ref in _raw(sym, state).refs:
            if (ref, state) in _DONE:
                continue
            if ref not in graph:
                graph.add_node(ref)
                todo.append(ref)
            graph.add_edge(sym, ref)
    dag = nx.condensation(graph)
    for c in reversed(list(nx.topological_sort(dag))):  # dependencies first
        members = sorted(dag.nodes[c]["members"])
        inside = set(members)

        def value(ref: Symbol, inside: set[Symbol] = inside) -> str:
            return f"scc:{ref[1]}" if ref in inside else _DONE[(ref, state)]

        texts = [_fill(_raw(m, state), value) for m in members]
        if len(members) == 1 and not graph.has_edge(members[0], members[0]):
            _DONE[(members[0], state)] = "code:" + hashlib.sha256(texts[0].encode()).hexdigest()[:20]
            continue
        whole = hashlib.sha256("\x00".join(sorted(f"{m[1]}={t}" for m, t in zip(members, texts, strict=True)))
                               .encode()).hexdigest()
        for m in members:
            _DONE[(m, state)] = "code:" + hashlib.sha256(f"{whole}:{m[1]}".encode()).hexdigest()[:20]
    return _DONE[(root, state)]
