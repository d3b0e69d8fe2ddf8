"""``python -m benchmarks.micro [--quick]``."""

from benchmarks.micro.cli import main

raise SystemExit(main())
