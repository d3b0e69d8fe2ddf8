"""Open the store that ``--store`` names."""

from __future__ import annotations

from meshlib_control.settings import StoreSpec
from meshlib_control.store.base import Store

__all__ = ["open_store"]


def open_store(spec: StoreSpec) -> Store:
    """The backend for *spec*: SQLite (a file) or etcd (loaded before this returns)."""
    if spec.backend == "etcd":
        from meshlib_control.store.etcd import EtcdStore  # httpx's etcd calls: only when used

        return EtcdStore(spec.endpoints, prefix=spec.prefix, tls=spec.tls)
    from meshlib_control.store.sqlite import SQLiteStore

    assert spec.path is not None
    return SQLiteStore(spec.path)
