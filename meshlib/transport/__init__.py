"""Connections whose peer identity is checked before a byte is sent.

Framework-free in the sense of DESIGN.md's layering: httpx is one of the library's core
dependencies, and both the agent's control-service client (``meshlib.runtime``) and the
mesh transports (``meshlib.integrations``) sit on top of this package.
"""
