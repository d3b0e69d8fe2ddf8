"""Observability of the mesh from the control service.

``prom``: a small Prometheus-text parser; ``golden``: PURE golden metrics (requests per
second, success rate, latency percentiles) from two scrapes, per service and per edge;
``envoy``: a sidecar's page in mesh terms; ``targets``: which admin address and paths the
observer may fetch; ``instances``: what it keeps per instance and :class:`PlaneView`, its
view of the control plane; ``scraper``: the asyncio task that scrapes every live
instance's admin port; ``checks``: ``meshctl check`` and ``meshctl explain``.

The observer depends on the ``PlaneView`` protocol, never on ``meshlib_control.plane``:
the plane owns an observer, so importing the plane back would make a cycle.
"""
