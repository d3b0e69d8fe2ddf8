"""Benchmarks: library mode against hand-wired TLS and an Envoy sidecar pair.

``python -m benchmarks.run --profile default`` (or ``make bench``) runs the data-plane
harness; docs/benchmarks.md explains the method and shows the results.
"""
