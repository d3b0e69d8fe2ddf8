"""What :meth:`meshlib.Mesh.start` says while it waits for the control service.

A first start with the control service down would otherwise wait ``start_timeout`` seconds
in silence: after :data:`FIRST` seconds, then every :data:`EVERY`, one WARNING on the
``meshlib`` logger names the service, the control URL, the time waited and the agent's last
error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["EVERY", "FIRST", "WaitReporter"]

FIRST = 2.0
EVERY = 10.0
log = logging.getLogger("meshlib")


class WaitReporter:
    """Call :meth:`tick` from the wait loop; it logs when a report is due."""

    def __init__(self, who: str, control_url: str, timeout: float) -> None:
        self.who, self.control_url, self.timeout = who, control_url, timeout
        self.started = time.monotonic()
        self.next = self.started + FIRST

    def tick(self, last_error: Callable[[], str | None]) -> None:
        now = time.monotonic()
        if now < self.next:
            return
        self.next = now + EVERY
        log.warning(
            "%s waiting for the control service at %s (identity and first snapshot), "
            "%.0fs of %gs: %s",
            self.who,
            self.control_url,
            now - self.started,
            self.timeout,
            last_error() or "no answer yet",
        )
