"""The directory ``meshctl run`` puts first on ``PYTHONPATH`` (its ``sitecustomize``)."""
