"""The layout's rules, checked on the source: what may sit at artifact/ root, who may import
the stages, no private names across modules, and a `--help` that loads no heavy library."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "artifact"
ROOT_MODULES = {"__init__", "__main__", "cli"}


def _modules(package: Path) -> dict[str, tuple[Path, ast.Module]]:
    """Every module under `package` by dotted name, with its path and syntax tree."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = (path, ast.parse(path.read_text(), filename=str(path)))
    return modules


def _imports(module: str, path: Path, tree: ast.Module) -> list[tuple[int, str, str | None]]:
    """(line, module, name) of every import of ours, relative ones resolved; name is None
    for `import module`."""
    package = module.split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: list[tuple[int, str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            found += [(node.lineno, target, a.name) for a in node.names]
    return [
        (line, module, name) for line, module, name in found if module.split(".")[0] == "artifact"
    ]


def _violations(package: Path) -> list[str]:
    problems = [
        f"artifact/{path.name}: a module at artifact/ root (only {sorted(ROOT_MODULES)})"
        for path in sorted(package.glob("*.py"))
        if path.stem not in ROOT_MODULES
    ]
    for module, (path, tree) in _modules(package).items():
        may_import_stages = module == "artifact.cli" or (module + ".").startswith(
            "artifact.stages."
        )
        for line, target, name in _imports(module, path, tree):
            full = f"{target}.{name}" if name else target
            if not may_import_stages and (full + ".").startswith("artifact.stages."):
                problems.append(f"{module}:{line}: imports {full} (only stages and cli may)")
            if name and name.startswith("_") and not name.startswith("__") and target != module:
                problems.append(f"{module}:{line}: imports private name {name} from {target}")
    return problems


def test_layout_and_imports():
    problems = _violations(PACKAGE)
    assert not problems, "\n".join(problems)


def test_rules_catch_planted_violations(tmp_path):
    pkg = tmp_path / "artifact"
    (pkg / "stages").mkdir(parents=True)
    (pkg / "core").mkdir()
    for init in (pkg, pkg / "stages", pkg / "core"):
        (init / "__init__.py").write_text("from artifact import __version__\n")
    (pkg / "cli.py").write_text("from artifact.stages import b\n")
    (pkg / "helpers.py").write_text("")
    (pkg / "core" / "a.py").write_text("from artifact import stages\nfrom artifact.x import _y\n")
    (pkg / "core" / "c.py").write_text("from ..stages import b\nfrom . import a, _z\n")
    (pkg / "stages" / "b.py").write_text("import artifact.stages.c\nfrom . import _d\n")
    assert sorted(_violations(pkg)) == [
        "artifact.core.a:1: imports artifact.stages (only stages and cli may)",
        "artifact.core.a:2: imports private name _y from artifact.x",
        "artifact.core.c:1: imports artifact.stages.b (only stages and cli may)",
        "artifact.core.c:2: imports private name _z from artifact.core",
        "artifact.stages.b:2: imports private name _d from artifact.stages",
        f"artifact/helpers.py: a module at artifact/ root (only {sorted(ROOT_MODULES)})",
    ]


@pytest.mark.parametrize("argv", [["--help"], ["predict", "--help"]])
def test_help_loads_no_heavy_library(argv):
    # The start-up benchmark reports the heavy libraries a command loads (one timed run).
    result = subprocess.run(
        [sys.executable, "benchmarks/bench_cli_startup.py", "--runs", "1", "--", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert "heavy libraries loaded: none" in result.stdout, result.stdout
