"""``python -m meshlib.run [--service S] … -- COMMAND…``."""

from __future__ import annotations

from meshlib.run.launch import main

raise SystemExit(main())
