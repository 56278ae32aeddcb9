"""The import rule and the size rule of docs/architecture.md, read from the source (AST, nothing imported).

* Prefect (``prefect``, ``prefect_dask``) is imported only in ``tasks/``, ``flows/`` and ``finmerge/runner/``,
  at module level or inside a function alike. The library asks :mod:`finmerge.core.services` for what the
  orchestrator provides (secret blocks, line locks, the task runner's Dask client).
* Imports point downwards: core (with ``finmerge.config`` and the ``finmerge`` package itself) < models <
  the domain packages < runner < tasks < flows < the entry points (``finmerge.cli``, ``finmerge.stack``).
  Domain packages do not import each other, except the pairs in :data:`DOMAIN_EXCEPTIONS`.
* No import cycle between packages (``finmerge.core``, ``finmerge.merge``, ``tasks``, …).
* No module over :data:`MAX_LINES` lines, except the data tables in :data:`DATA_TABLES`.

Each test lists every offender, not just the first.
"""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from pathlib import Path

from finmerge.core import services

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("finmerge", "tasks", "flows")
PREFECT = ("prefect", "prefect_dask")
MAY_IMPORT_PREFECT = ("tasks", "flows", "finmerge.runner")

CORE, MODELS, DOMAIN, RUNNER, TASKS, FLOWS, ENTRY = range(7)
DOMAINS = ("corpus", "train", "merge", "evaluate", "registry", "demo", "sweep")
LAYERS = {
    "finmerge": CORE,  # the package's __init__ (version only)
    "finmerge.config": CORE,
    "finmerge.core": CORE,
    "finmerge.models": MODELS,
    **{f"finmerge.{d}": DOMAIN for d in DOMAINS},
    "finmerge.runner": RUNNER,
    "tasks": TASKS,
    "flows": FLOWS,
    "finmerge.cli": ENTRY,
    "finmerge.commands": ENTRY,
    "finmerge.stack": ENTRY,
    "finmerge.authz": ENTRY,  # the MLflow server's auth app (mlflow server --app-name finmerge-auth)
}
LAYER_NAMES = ("core", "models", "domain", "runner", "tasks", "flows", "entry point")

# (importing module or package, imported module or package): the only imports between domain packages.
DOMAIN_EXCEPTIONS = {
    # tokenize reads a dedup folder's whole lineage (kept batches minus retractions) as its corpus
    ("finmerge.train.tokenize", "finmerge.corpus.dedup"),
    # the demo trains its tiny models with the real tokenize/pack and training loop
    ("finmerge.demo.build", "finmerge.train.pretrain"),
    ("finmerge.demo.build", "finmerge.train.tokenize"),
    # the demo's fake EDINET filings use the section names the filings reader expects
    ("finmerge.demo.edinet", "finmerge.corpus.filings"),
}

# (importing module, imported module): the only imports against the layer order. The config's allowed merge
# methods come from the method registry, the one place a method is declared; that module imports nothing of
# ours at load time (its combine steps load the kernels when first called), so no import cycle is real.
UPWARD_EXCEPTIONS = {("finmerge.config.merge", "finmerge.merge.method_registry")}

MAX_LINES = 500
DATA_TABLES = {"finmerge/demo/vocab.py"}  # word lists of the demo world, no logic


def source_files() -> list[Path]:
    return sorted(p for d in SOURCE_DIRS for p in (ROOT / d).rglob("*.py") if "__pycache__" not in p.parts)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.cache
def known_modules() -> frozenset[str]:
    return frozenset(module_name(p) for p in source_files())


@functools.cache
def imports_of(path: Path) -> tuple[tuple[int, str], ...]:
    """(line, imported module) for every import statement of the file, wherever it stands. ``from a import
    b`` names ``a.b`` when that is a module of ours, else ``a``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((node.lineno, sub if sub in known_modules() else base))
    return tuple(found)


def unit_of(module: str) -> str | None:
    """The package an import rule talks about (``finmerge.merge``, ``tasks``, …), or None for a third party."""
    parts = module.split(".")
    for n in (2, 1):
        if ".".join(parts[:n]) in LAYERS:
            return ".".join(parts[:n])
    return None


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def edges() -> list[tuple[str, int, str]]:
    """(importing module, line, imported module) for every import of one of our modules."""
    return [
        (module_name(path), line, target)
        for path in source_files()
        for line, target in imports_of(path)
        if unit_of(target) is not None
    ]


def test_prefect_is_imported_only_by_tasks_flows_and_the_runner():
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: imports {target}"
        for path in source_files()
        if not any(within(module_name(path), allowed) for allowed in MAY_IMPORT_PREFECT)
        for line, target in imports_of(path)
        if target.split(".")[0] in PREFECT
    ]
    print("\n".join(offenders))
    assert not offenders, "Prefect outside tasks/, flows/, finmerge/runner/:\n" + "\n".join(offenders)


def test_imports_point_downwards():
    offenders = []
    for importer, line, target in edges():
        mine, theirs = unit_of(importer), unit_of(target)
        if mine == theirs:
            continue
        if (importer, target) in UPWARD_EXCEPTIONS:
            continue
        if LAYERS[theirs] > LAYERS[mine]:
            offenders.append(
                f"{importer}:{line} ({LAYER_NAMES[LAYERS[mine]]}) imports {target} "
                f"({LAYER_NAMES[LAYERS[theirs]]}, a higher layer)"
            )
        elif LAYERS[theirs] == LAYERS[mine] == DOMAIN and not any(
            within(importer, a) and within(target, b) for a, b in DOMAIN_EXCEPTIONS
        ):
            offenders.append(f"{importer}:{line} imports {target}: another domain package (not an exception)")
    print("\n".join(offenders))
    assert not offenders, "imports against the layer order:\n" + "\n".join(offenders)


def test_domain_exceptions_are_still_needed():
    """An exception nobody uses any more is removed from the list, so the list stays short and true."""
    used = {
        (a, b)
        for importer, _, target in edges()
        for a, b in DOMAIN_EXCEPTIONS
        if within(importer, a) and within(target, b)
    }
    assert used == DOMAIN_EXCEPTIONS, f"unused exceptions: {sorted(DOMAIN_EXCEPTIONS - used)}"


def test_no_import_cycles_between_packages():
    graph: dict[str, set[str]] = {}
    for importer, _, target in edges():
        a, b = unit_of(importer), unit_of(target)
        if a != b and (importer, target) not in UPWARD_EXCEPTIONS:
            graph.setdefault(a, set()).add(b)
    cycles: list[list[str]] = []
    state: dict[str, str] = {}  # grey while on the current path, black once done

    def visit(node: str, path: list[str]) -> None:
        state[node] = "grey"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "grey":
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "black"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    shown = [" -> ".join(c) for c in cycles]
    print("\n".join(shown))
    assert not cycles, "import cycles between packages:\n" + "\n".join(shown)


def test_no_module_is_over_the_size_limit():
    sizes = {
        p.relative_to(ROOT).as_posix(): len(p.read_text(encoding="utf-8").splitlines())
        for p in source_files()
    }
    offenders = [
        f"{name}: {n} lines" for name, n in sorted(sizes.items()) if n > MAX_LINES and name not in DATA_TABLES
    ]
    print("\n".join(offenders))
    assert not offenders, f"modules over {MAX_LINES} lines (split them by topic):\n" + "\n".join(offenders)


def test_the_rules_see_what_they_should():
    """The checks above are only as good as their reading of the tree: a known import of each kind is seen."""
    seen = {(importer, target) for importer, _, target in edges()}
    assert ("finmerge.registry.promote", "finmerge.core.services") in seen  # a module-level `from … import`
    assert ("finmerge.train.tokenize", "finmerge.corpus.dedup") in seen  # an import inside a function
    assert any(
        target.startswith("prefect") for path in source_files() for _, target in imports_of(path)
    )  # Prefect imports are found where they are allowed
    assert set(unit_of(m) for m in known_modules()) <= set(LAYERS), "a package with no layer"


def test_the_runner_provides_every_service_without_importing_prefect():
    """Importing the runner (as every entry point does) installs what the library asks the orchestrator for,
    and stays fast: Prefect itself is imported only when a service is used."""
    probe = (
        "import sys, finmerge.runner.stage\n"
        "from finmerge.core import services\n"
        "print(sorted(services._providers), sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{PREFECT!r}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == f"{sorted(services.SERVICES)} []", out.stdout + out.stderr
