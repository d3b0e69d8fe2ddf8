"""Run a blocking py-consul call off the event loop, in a daemon thread.

Not ``asyncio.to_thread``: ``asyncio.run`` joins the default executor when it ends, so a
blocking query still waiting (up to its ``wait``) would hold the control service's
shutdown that long. A daemon thread is abandoned instead; its answer is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["in_daemon_thread"]

_T = TypeVar("_T")


async def in_daemon_thread(fn: Callable[..., _T], *args: Any) -> _T:
    """``await`` *fn(*args)* run in a new daemon thread; its exception is raised here."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():  # cancelled meanwhile
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def work() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:  # handed to the awaiting task
            error: BaseException | None = exc
            result = None
        else:
            error = None
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=work, name="consul-call", daemon=True).start()
    return await future
