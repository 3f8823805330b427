"""Layering of the vmig package: every module imports alone, and imports point only down.

Layers, lowest first: stream < vmstate < io < device < migration < analysis, checks < testing
< cli. ``vmig.errors``, ``vmig.units`` and ``vmig.runs`` (leaf helpers) may be imported by all.
Every ``import vmig.…`` / ``from vmig… import`` statement is checked, also those inside
functions (they are the ones that hide a cycle until the function runs).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "vmig"

RANK = {
    "stream": 0,
    "vmstate": 1,
    "io": 2,
    "device": 3,
    "migration": 4,
    "analysis": 5,
    "checks": 5,
    "testing": 6,
    "cli": 7,
    "__main__": 7,
}
SHARED = {"errors", "units", "runs", "records"}


def _modules() -> list[str]:
    out = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out.append(".".join(parts))
    return out


MODULES = _modules()


def _layer(module: str) -> str | None:
    """The first component below ``vmig`` (None for the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _imported(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every vmig import in ``path``, at any depth."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "vmig"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.split(".")[0] == "vmig":
                found.append((node.lineno, name))
    return found


def test_module_list_is_complete() -> None:
    assert "vmig.stream.decoder" in MODULES and "vmig.io.decoding" in MODULES
    assert all(_layer(m) in RANK or _layer(m) in SHARED or _layer(m) is None for m in MODULES), [
        m for m in MODULES if _layer(m) not in RANK and _layer(m) not in SHARED and _layer(m) is not None]


@pytest.mark.parametrize("module", MODULES)
def test_imports_point_down(module: str) -> None:
    layer = _layer(module)
    if layer is None or layer in SHARED:
        allowed_max = -1 if layer in SHARED else None
    else:
        allowed_max = RANK[layer]
    path = PKG.parent / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = PKG.parent / module.replace(".", "/") / "__init__.py"
    bad = []
    for line, name in _imported(path, module):
        target = _layer(name)
        if target is None or target in SHARED or allowed_max is None:
            continue
        if RANK.get(target, 99) > allowed_max:
            bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not bad, "imports point up a layer:\n" + "\n".join(bad)


def test_every_module_imports_alone() -> None:
    """Each module in a fresh interpreter of its own: no module-level import cycle hides behind
    the order in which other modules happen to be imported."""
    targets = [m for m in MODULES if m != "vmig.__main__"]  # __main__ runs the CLI

    def run(module: str) -> str | None:
        r = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True,
                           text=True, cwd=ROOT, timeout=600)
        if r.returncode == 0:
            return None
        return f"{module}: {(r.stderr.strip().splitlines() or ['?'])[-1]}"

    with ThreadPoolExecutor(max_workers=4) as pool:
        failed = [f for f in pool.map(run, targets) if f is not None]
    assert not failed, "modules that fail to import alone:\n" + "\n".join(failed)


def test_architecture_names_every_module() -> None:
    """docs/ARCHITECTURE.md has a line for every module (commands: listed by name under
    ``vmig/cli/<command>.py``)."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    commands = text.split("vmig/cli/<command>.py", 1)[1].split("```", 1)[0]
    missing = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in text:
            continue
        if rel.startswith("vmig/cli/") and path.stem in commands:
            continue
        missing.append(rel)
    for path in sorted(PKG.rglob("*.c")):
        if path.relative_to(ROOT).as_posix() not in text:
            missing.append(path.relative_to(ROOT).as_posix())
    assert not missing, missing
