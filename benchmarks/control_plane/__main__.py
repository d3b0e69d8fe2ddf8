"""``python -m benchmarks.control_plane [--quick]``."""

from benchmarks.control_plane.cli import main

raise SystemExit(main())
