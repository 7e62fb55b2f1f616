"""Every public function, method and class in ``iot_flows`` has a docstring.

Read from the source with ``ast`` (nothing is imported). The rule, for every ``.py`` file
under ``iot_flows/`` (private modules too: their public names are what sibling modules use):

- a module-level function or class whose name does not start with ``_`` needs a docstring;
- so does a method (or nested class) of such a class whose name does not start with ``_``
  (dunder methods such as ``__init__`` are excluded; document the class instead);
- definitions inside functions are excluded, and so are ``@x.setter`` /
  ``@x.deleter`` and ``@overload`` stubs;
- a method without its own docstring passes when a base class (resolved by name anywhere
  in ``iot_flows``) defines the same method with one: an implementation of a documented
  interface (``HubStore``, ``ClusterStore``, ``SqlDialect``, ...) inherits its contract,
  as ``inspect.getdoc`` does.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "iot_flows"

_Def = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


@dataclass
class _Class:
    bases: list[str]
    documented: set[str] = field(default_factory=set)  # method names with a docstring


def _skipped(node: _Def) -> bool:
    if node.name.startswith("_"):
        return True
    for decorator in node.decorator_list:
        text = ast.unparse(decorator)
        if text.endswith((".setter", ".deleter")) or text in ("overload", "typing.overload"):
            return True
    return False


def _base_name(expr: ast.expr) -> str:
    if isinstance(expr, ast.Subscript):  # Generic[T], Transformer[Token, Any]
        expr = expr.value
    return ast.unparse(expr).rsplit(".", 1)[-1]


def _scan() -> tuple[dict[str, _Class], list[tuple[str, str | None, str]]]:
    """(classes by name, [(where, owning class or None, name)] of defs without docstring)."""
    classes: dict[str, _Class] = {}
    missing: list[tuple[str, str | None, str]] = []

    def visit(body: list[ast.stmt], path: Path, owner: ast.ClassDef | None) -> None:
        for node in body:
            if not isinstance(node, _Def) or _skipped(node):
                continue
            has_doc = ast.get_docstring(node) is not None
            if owner is not None and has_doc:
                classes[owner.name].documented.add(node.name)
            if not has_doc:
                where = f"{path.relative_to(ROOT.parent)}:{node.lineno}"
                missing.append((where, owner.name if owner else None, node.name))
            if isinstance(node, ast.ClassDef):
                classes.setdefault(node.name, _Class([_base_name(b) for b in node.bases]))
                visit(node.body, path, node)

    for path in sorted(ROOT.rglob("*.py")):
        visit(ast.parse(path.read_text(), str(path)).body, path, None)
    return classes, missing


def _inherits_doc(classes: dict[str, _Class], owner: str, method: str) -> bool:
    seen: set[str] = set()
    todo = list(classes[owner].bases)
    while todo:
        name = todo.pop()
        if name in seen or name not in classes:
            continue
        seen.add(name)
        if method in classes[name].documented:
            return True
        todo.extend(classes[name].bases)
    return False


def test_every_public_function_method_and_class_has_a_docstring() -> None:
    classes, missing = _scan()
    undocumented = [
        f"{where} {owner + '.' if owner else ''}{name}"
        for where, owner, name in missing
        if owner is None or not _inherits_doc(classes, owner, name)
    ]
    assert not undocumented, f"{len(undocumented)} public definitions without a docstring:\n" + "\n".join(undocumented)


def test_an_implementation_inherits_its_interfaces_docstring() -> None:
    """Guard against a rule that exempts too much or finds nothing."""
    classes, missing = _scan()
    assert len(classes) > 100
    assert ("SqliteStore", "get") in {(owner, name) for _, owner, name in missing}  # no own docstring...
    assert _inherits_doc(classes, "SqliteStore", "get")  # ...but HubStore.get has one
    assert not _inherits_doc(classes, "SqliteStore", "no_such_method")
