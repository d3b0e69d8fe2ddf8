"""Until the agent builds the admission at install: one per engine, found by identity.

:class:`AdmissionCache` answers the admission for the engine it is given, rebuilding only
when that engine is not the one it last saw (one ``is`` comparison per request, no other
change detection). :class:`AdmissionSource` prefers the admission the mesh built at install
(``mesh.view.inbound``, see :mod:`meshlib.runtime.view`) and falls back to a cache shared
per mesh object, so the HTTP middleware and the gRPC interceptors of one process spend
from the same rate limit.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from meshlib.inbound.admission import Admission
from meshlib.policy.engine import PolicyEngine

__all__ = ["AdmissionCache", "admission_of"]


class AdmissionCache:
    """The :class:`Admission` of the last engine seen, carried over engine to engine."""

    __slots__ = ("_current",)

    def __init__(self) -> None:
        self._current: Admission | None = None

    def get(self, engine: PolicyEngine) -> Admission:
        """The admission for *engine* (built on first sight of it, from the previous one)."""
        current = self._current
        if current is not None and current.engine is engine:
            return current
        built = Admission.build(engine, current)
        self._current = built  # one assignment; a racing builder only loses a bucket refill
        return built


_CACHES: weakref.WeakKeyDictionary[Any, AdmissionCache] = weakref.WeakKeyDictionary()
_CACHES_LOCK = threading.Lock()


def _cache_for(mesh: object) -> AdmissionCache:
    try:
        cache = _CACHES.get(mesh)
    except TypeError:  # not weak-referenceable: a private cache (no sharing)
        return AdmissionCache()
    if cache is None:
        with _CACHES_LOCK:
            cache = _CACHES.setdefault(mesh, AdmissionCache())
    return cache


class AdmissionSource:
    """Per-adapter handle: the mesh's published admission, else the shared cache's."""

    __slots__ = ("_cache", "_has_view", "_mesh")

    def __init__(self, mesh: Any) -> None:
        self._mesh = mesh
        self._cache: AdmissionCache | None = None
        # Decided once: a holder without an active view (tests, tools) skips the lookup.
        self._has_view = hasattr(type(mesh), "view") or "view" in getattr(mesh, "__dict__", ())

    def get(self) -> Admission:
        """The admission for the mesh's active snapshot."""
        mesh = self._mesh
        if self._has_view:
            admission = getattr(mesh.view, "inbound", None)
            if isinstance(admission, Admission):
                return admission  # built at install: no change detection at all
        cache = self._cache
        if cache is None:
            cache = self._cache = _cache_for(mesh)
        return cache.get(mesh.engine)


def admission_of(mesh: Any) -> Admission:
    """The admission for *mesh*'s active snapshot (see the module docstring)."""
    return AdmissionSource(mesh).get()
