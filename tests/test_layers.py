"""Layers that don't cross: the import rules of DESIGN.md and docs/concepts.md, checked.

Imports are read with :mod:`ast`, never executed. Three kinds of import are told apart:

- *module-level*: run when the module is imported (also inside ``try``/``if`` and class
  bodies at module level). Only these can make an import cycle.
- *deferred*: inside a function. They cannot make a cycle, but they are still a
  dependency, so every direction rule counts them.
- *type-only*: under ``if TYPE_CHECKING:``. They never run; the direction rules ignore
  them, except that ``meshlib`` never names ``meshlib_control`` and ``meshlib_control``
  never names a private library name even in annotations.

Each test gathers every violation of its rule and fails once, listing them all.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("meshlib", "meshlib_control")
MAX_LINES = 450  # STYLE.md: "a file past ~400 lines is a sign to split"; a small margin
# Generated code copied from xds-protos (its README): not ours to split or layer.
VENDORED = ROOT / "meshlib_control" / "xds" / "protos"

# docs/concepts.md, "How the two packages depend on each other": what each part of
# meshlib_control may import from the library. Every module may use the first entry; a
# module may also use what the entries matching its name add.
CONTROL_MAY_IMPORT: dict[str, tuple[str, ...]] = {
    "meshlib_control": ("meshlib.errors", "meshlib.policy", "meshlib.identity"),
    "meshlib_control.server": ("meshlib.integrations.uvicorn",),
    "meshlib_control.xds.ads": ("meshlib.integrations.grpc_server",),
    "meshlib_control.admin_client": ("meshlib.integrations.httpx",),
    "meshlib_control.sidecar": ("meshlib.runtime", "meshlib.config"),
}

CLIENT_MODULE = re.compile(r"^meshlib\.integrations\.(httpx|grpc_client)[^.]*(\.|$)")
SERVER_MODULE = re.compile(r"^meshlib\.integrations\.(asgi|uvicorn|grpc_server)[^.]*(\.|$)")


@dataclass(frozen=True, slots=True)
class Import:
    """One imported module (and, for ``from`` imports, the names taken from it)."""

    source: str  # the importing module
    target: str  # the module imported (a submodule when ``from pkg import submodule``)
    names: tuple[str, ...]
    line: int
    kind: str  # "module-level", "deferred" or "type-only"

    def where(self) -> str:
        return f"{module_path(self.source)}:{self.line}"


def module_path(module: str) -> str:
    """The repository-relative path of *module*."""
    return str(MODULES[module].relative_to(ROOT))


def _discover() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.is_relative_to(VENDORED):
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


MODULES = _discover()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, kind: str) -> Iterator[tuple[ast.AST, str]]:
    """Every node under *node* with the kind of import it would be."""
    for child in ast.iter_child_nodes(node):
        child_kind = kind
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            child_kind = "type-only" if kind == "type-only" else "deferred"
        yield child, child_kind
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield stmt, "type-only"
                yield from _walk(stmt, "type-only")
            for stmt in child.orelse:
                yield stmt, child_kind
                yield from _walk(stmt, child_kind)
        else:
            yield from _walk(child, child_kind)


def _resolve(source: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = source if MODULES[source].name == "__init__.py" else source.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


@cache
def imports_of(source: str) -> tuple[Import, ...]:
    """The imports of our own modules (meshlib, meshlib_control) made by *source*."""
    tree = ast.parse(MODULES[source].read_text(encoding="utf-8"))
    found: list[Import] = []
    for node, kind in _walk(tree, "module-level"):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(source, alias.name, (), node.lineno, kind))
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(source, node)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in MODULES:  # ``from pkg import submodule``
                    found.append(Import(source, sub, (), node.lineno, kind))
                else:
                    found.append(Import(source, base, (alias.name,), node.lineno, kind))
    return tuple(i for i in found if i.target.split(".")[0] in PACKAGES)


def all_imports() -> Iterator[Import]:
    for module in MODULES:
        yield from imports_of(module)


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _fail_on(rule: str, violations: list[str]) -> None:
    """Fail listing every violation of *rule* (and no traceback), when there are any."""
    if violations:
        report = f"{rule}: {len(violations)} violation(s)\n  " + "\n  ".join(violations)
        pytest.fail(report, pytrace=False)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_checker_sees_imports_of_each_kind() -> None:
    """The parser finds module-level, deferred and TYPE_CHECKING imports (a self-check)."""
    kinds = {i.kind for i in all_imports()}
    assert {"module-level", "deferred", "type-only"} <= kinds
    assert any(i.target == "meshlib.policy.model" for i in imports_of("meshlib_control.commands"))


def test_no_import_cycles() -> None:
    """No cycle between modules through imports that run at import time."""
    graph: dict[str, set[str]] = {}
    edges: dict[tuple[str, str], Import] = {}
    for imp in all_imports():
        if imp.kind != "module-level" or imp.target not in MODULES or imp.target == imp.source:
            continue
        # Importing a package's own submodule from its __init__ is not a cycle of layers.
        if _within(imp.target, imp.source) and MODULES[imp.source].name == "__init__.py":
            continue
        graph.setdefault(imp.source, set()).add(imp.target)
        edges.setdefault((imp.source, imp.target), imp)
    violations = []
    for component in _cycles(graph):
        members = set(component)
        links = [
            f"{a} -> {b} ({edges[a, b].where()})"
            for a in component
            for b in sorted(graph.get(a, ()))
            if b in members
        ]
        violations.append("cycle {" + ", ".join(component) + "}: " + "; ".join(links))
    _fail_on("import cycles", violations)


def test_library_never_imports_the_control_service() -> None:
    """``meshlib`` names ``meshlib_control`` nowhere, not even for type checking."""
    violations = [
        f"{i.where()} imports {i.target}"
        for i in all_imports()
        if _within(i.source, "meshlib") and _within(i.target, "meshlib_control")
    ]
    _fail_on("meshlib -> meshlib_control", violations)


def test_policy_imports_only_errors_and_itself() -> None:
    """``meshlib.policy`` is pure: of our code it uses only ``meshlib.errors`` and itself."""
    violations = [
        f"{i.where()} imports {i.target}"
        for i in all_imports()
        if _within(i.source, "meshlib.policy")
        and i.kind != "type-only"
        and not (_within(i.target, "meshlib.policy") or i.target == "meshlib.errors")
    ]
    _fail_on("meshlib.policy imports", violations)


def test_runtime_does_not_import_integrations() -> None:
    """``meshlib.runtime`` (agent, control client, cache, admin) uses no integration."""
    violations = [
        f"{i.where()} imports {i.target}"
        for i in all_imports()
        if _within(i.source, "meshlib.runtime")
        and i.kind != "type-only"
        and _within(i.target, "meshlib.integrations")
    ]
    _fail_on("meshlib.runtime -> meshlib.integrations", violations)


def test_clients_do_not_import_servers() -> None:
    """httpx and gRPC client modules import no server module (asgi, uvicorn, grpc_server)."""
    violations = [
        f"{i.where()} imports {i.target}"
        for i in all_imports()
        if CLIENT_MODULE.match(i.source) and i.kind != "type-only" and SERVER_MODULE.match(i.target)
    ]
    _fail_on("client -> server modules", violations)


def _private_attributes(module: str) -> Iterator[str]:
    """``alias._name`` where *alias* is bound to a library module by an import."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _within(alias.name, "meshlib"):
                    bound.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and _within(_resolve(module, node), "meshlib"):
            bound.update(alias.asname or alias.name for alias in node.names)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            root: ast.expr = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in bound:
                yield f"{module_path(module)}:{node.lineno} uses {ast.unparse(node)}"


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_control_imports_no_private_library_names() -> None:
    """``meshlib_control`` uses only public library names: no ``_name``, no ``_module``."""
    violations: list[str] = []
    for module in MODULES:
        if not _within(module, "meshlib_control"):
            continue
        for i in imports_of(module):
            if not _within(i.target, "meshlib"):
                continue
            private = [n for n in i.names if _is_private(n)]
            private += [p for p in i.target.split(".") if _is_private(p)]
            if private:
                violations.append(f"{i.where()} imports {', '.join(private)} from {i.target}")
        violations.extend(_private_attributes(module))
    _fail_on("private library names in meshlib_control", violations)


def test_control_imports_only_the_allowed_library_modules() -> None:
    """Each part of ``meshlib_control`` imports only the library modules its rule allows."""
    violations: list[str] = []
    for i in all_imports():
        if not _within(i.source, "meshlib_control") or i.kind == "type-only":
            continue
        if not _within(i.target, "meshlib"):
            continue
        allowed = [
            prefix
            for scope, prefixes in CONTROL_MAY_IMPORT.items()
            if _within(i.source, scope)
            for prefix in prefixes
        ]
        if not any(_within(i.target, prefix) for prefix in allowed):
            violations.append(
                f"{i.where()} imports {i.target}; {i.source} may import only " + ", ".join(allowed)
            )
    _fail_on("meshlib_control -> library modules", violations)


def test_no_module_is_too_long() -> None:
    """No module of meshlib or meshlib_control is over 450 lines (~400 is the target)."""
    violations = []
    for module, path in MODULES.items():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES:
            violations.append(f"{module_path(module)}: {lines} lines")
    _fail_on(f"modules over {MAX_LINES} lines", violations)


def test_the_cycle_finder_reports_each_cycle_once() -> None:
    """A two-module cycle is one component; a module that only points into it is not in it."""
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}, "d": set()}) == [["a", "b"]]
