"""SIGTERM / SIGINT during training: the first asks the loop to stop at the end of the step
(it then saves a checkpoint), a second stops at once."""

from __future__ import annotations

import contextlib
import signal
from typing import Any

__all__ = ["StopRequest"]


class StopRequest:
    """Installs the handlers (:meth:`install`) and records the first signal (``signum``)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        def handler(signum: int, frame: Any) -> None:
            if self.signum is not None:  # second signal: stop now
                signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
                raise KeyboardInterrupt
            self.signum = signum

        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: no handlers
                self._previous[sig] = signal.signal(sig, handler)

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
