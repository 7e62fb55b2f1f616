"""Packages talk through their front doors, and no two packages import each other.

Read from the source (``ast``), so a lazy import inside a function counts too: an import
cycle between packages is a design cycle whether or not it happens at import time.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "iot_flows"
#: Packages below iot_flows (folders with __init__.py); top-level ``_x.py`` modules are
#: the shared base (exceptions, settings, SAS, time) every package may use.
PACKAGES = sorted(p.parent.name for p in ROOT.glob("*/__init__.py"))


def _imports(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
            found.extend((f"{node.module}.{alias.name}", node.lineno) for alias in node.names)
        elif isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
    return found


def _package_of(path: Path) -> str | None:
    parts = path.relative_to(ROOT).parts
    return parts[0] if len(parts) > 1 else None


def _edges() -> dict[str, dict[str, list[str]]]:
    """package -> other package -> ["file:line", ...] for every import between them."""
    edges: dict[str, dict[str, list[str]]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        source = _package_of(path)
        if source is None or path.name == "__main__.py":  # entry points compose packages
            continue
        for module, line in _imports(path):
            parts = module.split(".")
            if parts[0] != "iot_flows" or len(parts) < 2 or parts[1] not in PACKAGES or parts[1] == source:
                continue
            edges.setdefault(source, {}).setdefault(parts[1], []).append(f"{path.relative_to(ROOT.parent)}:{line}")
    return edges


def test_no_package_imports_another_packages_private_module() -> None:
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        source = _package_of(path)
        for module, line in _imports(path):
            parts = module.split(".")
            if (
                parts[0] == "iot_flows"
                and len(parts) > 2
                and parts[1] in PACKAGES
                and parts[1] != source
                and parts[2].startswith("_")
            ):
                offenders.append(f"{path.relative_to(ROOT.parent)}:{line} imports {module}")
    assert not offenders, "import the package instead (its __init__):\n" + "\n".join(sorted(set(offenders)))


def test_no_import_cycle_between_packages() -> None:
    edges = _edges()
    cycles = []
    for a, targets in edges.items():
        for b in targets:
            if a < b and a in edges.get(b, {}):
                cycles.append(f"{a} <-> {b}: {edges[a][b][0]} and {edges[b][a][0]}")
    assert not cycles, "\n".join(cycles)


def test_device_side_does_not_load_the_server_stack() -> None:
    code = (
        "import sys, iot_flows.device, iot_flows.client; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('uvicorn', 'starlette', 'lark', 'prefect', 'asyncpg')"
        " or m.startswith('iot_flows.hub')); print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
