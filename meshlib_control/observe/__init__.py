"""Observability of the mesh from the control service.

``prom``: a small Prometheus-text parser; ``golden``: PURE golden metrics (requests per
second, success rate, latency percentiles) from two scrapes, per service and per edge;
``scraper``: the asyncio task that scrapes every live instance's admin port; ``checks``:
``meshctl check`` and ``meshctl explain``.
"""
