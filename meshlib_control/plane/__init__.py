"""The control plane: the control service's operations, independent of HTTP.

``control``: :class:`ControlPlane`, which owns the CA, store, snapshot cache and observer;
``workloads``: the workload API's operations (sign, register, report); ``admin``: the admin
API's (resources, tokens, listings); ``fields``: registration field checks; ``base``: the
parts and state both sets of operations share.
"""

from meshlib_control.plane.control import ControlPlane

__all__ = ["ControlPlane"]
