"""``meshctl run``'s bootstrap: put on ``PYTHONPATH`` by the launcher, run at interpreter start.

Only the first Python process of a ``meshctl run`` (``MESH_RUN=1``) installs the mesh; it
marks the variable claimed so that Python processes it starts in turn do not join again.
"""

import os

if os.environ.get("MESH_RUN") == "1":
    from meshlib.run.bootstrap import install

    install()
