"""Envoy API modules copied from xds-protos 1.85.0 (tools/vendor_envoy_protos.py)."""
