"""``python -m meshlib_control``: the ``meshctl`` CLI under another name."""

from meshlib_control.cli import main

raise SystemExit(main())
