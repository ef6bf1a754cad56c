"""Rank 0's stall watchdog: says so when a training step takes far longer than usual.

A paused (SIGSTOP) or stuck rank blocks every other rank inside a collective until the process
group's timeout (``--dist-timeout``, 30 minutes by default) with nothing in the log. The main
thread is blocked in that collective, so the watch runs in a daemon thread: it compares the time
since the last finished step with the median of the recent step times and prints one line when
the step has taken ``factor`` times that median (and at least ``min_seconds``), again at every
doubling, and one when the run moves on.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

__all__ = ["StallWatchdog"]


class StallWatchdog:
    """``beat(step)`` after every step; ``paused()`` around work that is slow by design
    (checkpoints, samples); ``stop()`` at the end. Does nothing with ``factor == 0``."""

    def __init__(
        self,
        say: Callable[[str], None],
        factor: float = 10.0,
        min_seconds: float = 60.0,
        timeout_s: float | None = None,
        window: int = 50,
        poll_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.say, self.factor, self.min_seconds = say, factor, min_seconds
        self.timeout_s = timeout_s
        self.clock = clock
        self._times: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()
        self._last = clock()
        self._step = 0
        self._paused = 0
        self._warned_at = 0.0  # the stall length last reported (0: none in this step)
        self._stop = threading.Event()
        self._poll = poll_s if poll_s is not None else max(0.05, min(5.0, min_seconds / 4))
        self._thread: threading.Thread | None = None
        if factor > 0:
            self._thread = threading.Thread(target=self._run, name="inrflow-stall", daemon=True)
            self._thread.start()

    def beat(self, step: int) -> None:
        """Step ``step`` finished now."""
        now = self.clock()
        with self._lock:
            if self._paused == 0:
                self._times.append(now - self._last)
            if self._warned_at:
                self.say(f"step {step} finished after {now - self._last:.0f} s: the run goes on")
            self._last, self._step, self._warned_at = now, step, 0.0

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """No stall reports (and no step time recorded) while the block runs."""
        with self._lock:
            self._paused += 1
        try:
            yield
        finally:
            with self._lock:
                self._paused -= 1
                self._last, self._warned_at = self.clock(), 0.0

    def check(self) -> str | None:
        """The stall message due now, if any (the thread calls this; tests call it directly)."""
        with self._lock:
            if self._paused or len(self._times) < 3:
                return None
            median = statistics.median(self._times)
            waited = self.clock() - self._last
            limit = max(self.factor * median, self.min_seconds)
            if waited < limit or waited < 2 * self._warned_at:
                return None
            self._warned_at = waited
            step = self._step + 1
        timeout = (
            f"; the run fails when a collective has waited --dist-timeout {self.timeout_s:.0f} s"
            if self.timeout_s
            else ""
        )
        return (
            f"step {step} has taken {waited:.0f} s so far, {waited / max(median, 1e-9):.0f}x the "
            f"median of the last {len(self._times)} steps ({median:.3g} s): a process may be "
            f"paused, stuck or dead{timeout}"
        )

    def _run(self) -> None:
        while not self._stop.wait(self._poll):
            msg = self.check()
            if msg is not None:
                self.say(msg)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
