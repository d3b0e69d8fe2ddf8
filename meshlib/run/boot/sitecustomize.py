"""``meshctl run``'s bootstrap: put on ``PYTHONPATH`` by the launcher, run at interpreter start.

Only the first Python process of a ``meshctl run`` (``MESH_RUN=1``) installs the mesh; it
marks the variable claimed so that Python processes it starts in turn do not join again.
An interpreter that cannot import meshlib (another Python than meshlib's environment) must
not run the app outside the mesh: it exits 1 saying so.
"""

import os
import sys

if os.environ.get("MESH_RUN") == "1":
    try:
        from meshlib.run.bootstrap import install
    except ImportError as exc:
        sys.stderr.write(
            f"meshctl run: cannot install the mesh in {sys.executable}: {exc}; run the "
            "command with the Python of the environment meshlib is installed in\n"
        )
        sys.stderr.flush()
        os._exit(1)
    install()
