"""Apps that never import meshlib, run in the mesh by ``meshctl run`` (docs/run.md)."""
