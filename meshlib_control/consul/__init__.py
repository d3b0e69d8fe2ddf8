"""Consul integration of the control service (``meshctl control serve --consul URL``).

* :mod:`.export` keeps Consul's catalog in step with the mesh's registry (agent service
  registrations with a TTL check the control service keeps passing).
* :mod:`.status` counts and reports every Consul failure (``meshctl check``, a metric).
* :mod:`.client` builds the py-consul client from the flag's URL.

py-consul is the ``[consul]`` extra; it is imported only when ``--consul`` is given.
"""
