"""Until the agent builds the admission at install: one per engine, found by identity.

:class:`AdmissionCache` answers the admission for the engine it is given, rebuilding only
when that engine is not the one it last saw (one ``is`` comparison per request, no other
change detection). :func:`admission_of` prefers an admission the mesh already built
(``mesh.view.admission``) and falls back to a cache shared per mesh object, so the HTTP
middleware and the gRPC interceptors of one process spend from the same rate limit.
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

    __slots__ = ("_cache", "_mesh")

    def __init__(self, mesh: Any) -> None:
        self._mesh = mesh
        self._cache: AdmissionCache | None = None

    def get(self) -> Admission:
        """The admission for the mesh's active snapshot."""
        mesh = self._mesh
        view = getattr(mesh, "view", None)
        admission = getattr(view, "admission", None) if view is not None else None
        if isinstance(admission, Admission):
            return admission
        cache = self._cache
        if cache is None:
            cache = self._cache = _cache_for(mesh)
        return cache.get(mesh.engine)


def admission_of(mesh: Any) -> Admission:
    """The admission for *mesh*'s active snapshot (see the module docstring)."""
    return AdmissionSource(mesh).get()
