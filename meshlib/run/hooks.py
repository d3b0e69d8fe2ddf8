"""Post-import hooks: patch a module right after it is first imported.

A :class:`sys.meta_path` finder, placed first, finds the module's real spec with the other
finders and wraps its loader so that, once the module has executed, its patch function runs
before any importer receives the module. A module already imported is patched at once.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

__all__ = ["when_imported"]

Patch = Callable[[ModuleType], None]

_lock = threading.Lock()
_pending: dict[str, list[Patch]] = {}


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: Any, name: str) -> None:
        self._inner = inner
        self._name = name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        create = getattr(self._inner, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module: ModuleType) -> None:
        self._inner.exec_module(module)
        with _lock:
            patches = _pending.pop(self._name, [])
        for patch in patches:
            patch(module)

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, is_package, …
        return getattr(self._inner, name)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _pending:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _Loader(spec.loader, fullname)
        return spec


_finder = _Finder()


def when_imported(name: str, patch: Patch) -> None:
    """Run *patch* on module *name* once it is imported (now, if it already is)."""
    module = sys.modules.get(name)
    if module is not None:
        patch(module)
        return
    with _lock:
        _pending.setdefault(name, []).append(patch)
        if _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)
