"""The layering, read from the source with ``ast`` (nothing is imported):

    convserve/  the command line: the only place that imports both training and service CLIs
    service/    the model server: the network, bundles and store, never the training machinery
    training/   the network, data, trainer, bundles, store: never service/ nor convserve/

Every ``import``, ``from ... import`` (relative ones resolved) and ``importlib.import_module`` /
``__import__`` with a literal name counts, wherever it appears (a function-level import too).
"""

from __future__ import annotations

import ast
import fnmatch
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("training", "service", "convserve")

# What the service must never import, directly or through another first-party module: the
# training machinery (trainer, optimizers, data loading, augmentation, the recipe) and CLIs.
SERVICE_FORBIDDEN = (
    "training.trainer",
    "training.optimizers",
    "training.data",
    "training.download",
    "training.augment",
    "training.recipe",
    "training.*_cli",
    "convserve",
)
TRAINING_FORBIDDEN = ("service", "convserve")
CLI_MODULES = (
    "training.train_cli",
    "training.data_cli",
    "training.store_cli",
    "service.serve_cli",
    "service.client_cli",
)


@dataclass(frozen=True)
class Import:
    """One imported module name, where it is imported."""

    module: str  # the importing module, e.g. "service.app"
    imported: str  # e.g. "training.store"
    path: Path
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.module} imports {self.imported}"


def module_name(path: Path, root: Path) -> str:
    """``root/service/inputs/__init__.py`` -> ``service.inputs``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a ``from`` import names (``from .x import y`` in ``a.b`` -> ``a.x``)."""
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_dynamic_import(node: ast.Call) -> bool:
    """``importlib.import_module(...)``, ``import_module(...)`` or ``__import__(...)``."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    return name in ("import_module", "__import__") and bool(node.args)


def _literal_argument(node: ast.Call) -> str | None:
    """The module name of a dynamic import when it is written as a string literal."""
    first = node.args[0]
    return first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None


def imports_of(path: Path, root: Path) -> list[Import]:
    """Every module name ``path`` imports. ``from a import b`` yields ``a`` and ``a.b`` (b may
    be a submodule; a name that is not a module matches no rule). A module that imports by
    computed name (``import_module(name)``) is taken to import every string constant in it that
    names a first-party module, as a table of module names does (the old CLI's)."""
    module = module_name(path, root)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found, computed = [], False
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, is_package)
            names = [base] + [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"]
        elif isinstance(node, ast.Call) and _is_dynamic_import(node):
            literal = _literal_argument(node)
            names, computed = ([literal], computed) if literal else ([], True)
        found.extend(Import(module, name, path, node.lineno) for name in names if name)
    if computed:
        found.extend(
            Import(module, node.value, path, node.lineno)
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and "." in node.value  # "training.train_cli", not prog="convserve"
            and matches(node.value, PACKAGES)
            and node.value.replace(".", "").replace("_", "").isalnum()
        )
    return found


def package_imports(root: Path, package: str) -> list[Import]:
    """The imports of every module under ``root/package``."""
    return [
        found
        for path in sorted((root / package).rglob("*.py"))
        if "__pycache__" not in path.parts
        for found in imports_of(path, root)
    ]


def matches(name: str, patterns: tuple[str, ...]) -> bool:
    """Whether module ``name`` is one of ``patterns`` or inside one (``training.data`` covers
    ``training.data.mnist`` but not ``training.data_cli``; ``*`` as in fnmatch)."""
    return any(
        fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, pattern + ".*")
        for pattern in patterns
    )


def violations(root: Path, package: str, forbidden: tuple[str, ...]) -> list[str]:
    """Each import in ``package`` of a forbidden module, directly or through a chain of
    first-party modules: "path:line: a imports b -> b imports c"."""
    graph: dict[str, list[Import]] = {}
    for first_party in PACKAGES:
        if (root / first_party).is_dir():
            for found in package_imports(root, first_party):
                graph.setdefault(found.module, []).append(found)
    problems, reported = [], set()
    for start in package_imports(root, package):
        chain = _forbidden_chain(start, graph, forbidden, package)
        if chain and (start.path, start.line) not in reported:  # one per import statement
            reported.add((start.path, start.line))
            problems.append(" -> ".join(str(step) for step in chain))
    return problems


def _forbidden_chain(
    start: Import, graph: dict, forbidden: tuple, package: str
) -> list[Import] | None:
    """The first chain of imports from ``start`` that reaches a forbidden module (breadth
    first, so the shortest), or None. Chains run through other packages' modules only: each of
    ``package``'s own modules is checked by itself, so a problem is reported where it is."""
    frontier, seen = [[start]], {start.module}
    while frontier:
        chain = frontier.pop(0)
        imported = chain[-1].imported
        if matches(imported, forbidden):
            return chain
        if imported in seen or imported.split(".")[0] == package:
            continue
        seen.add(imported)
        frontier.extend([*chain, step] for step in graph.get(imported, []))
    return None


# --------------------------------------------------------------------------- the repository
def test_service_imports_no_training_machinery_nor_cli():
    problems = violations(REPO, "service", SERVICE_FORBIDDEN)
    assert not problems, "service/ must not import:\n" + "\n".join(problems)


def test_training_imports_neither_service_nor_convserve():
    problems = violations(REPO, "training", TRAINING_FORBIDDEN)
    assert not problems, "training/ must not import:\n" + "\n".join(problems)


def test_only_convserve_imports_the_command_line_modules_of_both_layers():
    clis_by_module: dict[str, set[str]] = {}
    for package in PACKAGES:
        for found in package_imports(REPO, package):
            if found.imported in CLI_MODULES:
                clis_by_module.setdefault(found.module, set()).add(found.imported)
    importers_of_both = {
        module
        for module, clis in clis_by_module.items()
        if {cli.split(".")[0] for cli in clis} == {"training", "service"}
    }
    assert importers_of_both == {"convserve.cli"}
    assert clis_by_module["convserve.cli"] == set(CLI_MODULES)  # every command, explicitly


# --------------------------------------------------------------------------- the checker itself
def write_tree(root: Path, files: dict[str, str]) -> Path:
    """Synthetic packages: {"service/app.py": "source", ...}; __init__.py files added."""
    for relative, source in files.items():
        path = root / relative
        for directory in reversed(path.relative_to(root).parents[:-1]):
            (root / directory).mkdir(exist_ok=True)
            (root / directory / "__init__.py").touch()
        path.write_text(source)
    return root


@pytest.mark.parametrize(
    "source,line",
    [
        ("from training.trainer import train\n", 2),
        ("import training.optimizers as optimizers\n", 2),
        ("from training import data_cli\n", 2),
        ("from training.data import load_mnist\n", 2),
        ("def late():\n    from training import recipe\n", 3),
        ("import importlib\nimportlib.import_module('training.augment')\n", 3),
        ("from convserve.cli import main\n", 2),
    ],
)
def test_checker_flags_a_forbidden_import_in_the_service(tmp_path, source, line):
    root = write_tree(tmp_path, {"service/bad.py": "import os\n" + source})
    (problem,) = violations(root, "service", SERVICE_FORBIDDEN)
    assert problem.startswith(f"{root / 'service' / 'bad.py'}:{line}: service.bad imports ")


def test_checker_follows_imports_through_training_modules(tmp_path):
    root = write_tree(
        tmp_path,
        {
            "service/page.py": "from training.sub.helpers import shift\n",
            "training/sub/helpers.py": "from ..augment import random_shift as shift\n",
            "training/augment.py": "",
        },
    )
    (problem,) = violations(root, "service", SERVICE_FORBIDDEN)
    assert "service.page imports training.sub.helpers -> " in problem
    assert problem.endswith("training.sub.helpers imports training.augment")


def test_checker_flags_training_importing_the_service(tmp_path):
    root = write_tree(
        tmp_path,
        {"training/cli.py": "import importlib\n\nCLI = importlib.import_module('service.app')\n"},
    )
    (problem,) = violations(root, "training", TRAINING_FORBIDDEN)
    assert problem == f"{root / 'training' / 'cli.py'}:3: training.cli imports service.app"


def test_checker_reads_a_table_of_module_names_imported_by_computed_name(tmp_path):
    # The shape of the old training/cli.py, which loaded the service's commands this way.
    source = (
        "import importlib\n"
        "COMMAND_MODULES = (\n"
        "    'training.train_cli',\n"
        "    'service.serve_cli',\n"
        ")\n"
        "MODULES = [importlib.import_module(name) for name in COMMAND_MODULES]\n"
        "PROG = 'convserve'\n"
    )
    root = write_tree(tmp_path, {"training/cli.py": source})
    (problem,) = violations(root, "training", TRAINING_FORBIDDEN)
    assert problem == f"{root / 'training' / 'cli.py'}:4: training.cli imports service.serve_cli"


def test_checker_accepts_what_the_service_may_import(tmp_path):
    root = write_tree(
        tmp_path,
        {
            "service/app.py": (
                "from training import __version__\n"
                "from training.store import ModelStore\n"
                "from training.bundle import Bundle\n"
                "from . import errors\n"
                "from .inputs.decode import pixels\n"
            ),
            "service/errors.py": "from training.errors import ConvserveError\n",
            "service/inputs/decode.py": "from ..errors import BadRequest\n",
            "training/store.py": "from training.bundle import Bundle\n",
            "training/bundle.py": "from training.network import Network\n",
            "training/data_cli.py": "from training.data import load_mnist\n",  # not imported
        },
    )
    assert violations(root, "service", SERVICE_FORBIDDEN) == []


@pytest.mark.parametrize(
    "name,forbidden",
    [
        ("training.data", True),
        ("training.data.mnist", True),
        ("training.data_cli", True),  # as a CLI, not as data loading
        ("training.dataset_tools", False),
        ("training.store", False),
        ("training", False),
    ],
)
def test_rules_match_modules_and_their_submodules_only(name, forbidden):
    assert matches(name, SERVICE_FORBIDDEN) is forbidden
