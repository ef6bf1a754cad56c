"""Rank 0's stall watchdog: says so when a training step takes far longer than usual.

A paused (SIGSTOP) or stuck rank blocks every other rank inside a collective until the process
group's timeout (``--dist-timeout``, 30 minutes by default) with nothing in the log. The main
thread is blocked in that collective, so the watch runs in a daemon thread: it compares the time
since the last finished step with the median of the recent step times and prints one line when
the step has taken ``factor`` times that median (and at least ``min_seconds``), again at every
doubling, and one when the run moves on. Work that is slow by design (checkpoints, samples) is
timed against its own history instead: a save stalled by a paused rank is reported too.
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
    """``beat(step)`` after every step; ``slow(what)`` around work that is slow by design;
    ``stop()`` at the end. Does nothing with ``factor == 0``."""

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
        self._steps: deque[float] = deque(maxlen=window)  # step times
        self._slow: dict[str, deque[float]] = {}  # durations of each kind of slow work
        self._lock = threading.Lock()
        self._last = clock()
        self._step = 0
        self._doing: str | None = None  # the slow work in progress
        self._warned_at = 0.0  # the wait last reported (0: none for the current wait)
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
            self._steps.append(now - self._last)
            self._moved_on(f"step {step}", now)
            self._last, self._step = now, step

    @contextlib.contextmanager
    def slow(self, what: str) -> Iterator[None]:
        """``what`` (e.g. "saving a checkpoint") runs in the block: judged against the earlier
        durations of the same work, not against the step time."""
        with self._lock:
            self._doing, self._last = what, self.clock()
        try:
            yield
        finally:
            now = self.clock()
            with self._lock:
                self._slow.setdefault(what, deque(maxlen=20)).append(now - self._last)
                self._moved_on(what, now)
                self._doing, self._last = None, now

    def _moved_on(self, what: str, now: float) -> None:
        if self._warned_at:
            self.say(f"{what} finished after {now - self._last:.0f} s: the run goes on")
        self._warned_at = 0.0

    def check(self) -> str | None:
        """The stall message due now, if any (the thread calls this; tests call it directly)."""
        with self._lock:
            history = self._steps if self._doing is None else self._slow.get(self._doing, ())
            if len(history) < (3 if self._doing is None else 1):
                return None  # nothing to compare with yet (the first save may be slow)
            median = statistics.median(history)
            waited = self.clock() - self._last
            limit = max(self.factor * median, self.min_seconds)
            if waited < limit or waited < 2 * self._warned_at:
                return None
            self._warned_at = waited
            what = f"step {self._step + 1}" if self._doing is None else self._doing
            kind = "steps" if self._doing is None else "times"
            count = len(history)
        timeout = (
            f"; the run fails when a collective has waited --dist-timeout {self.timeout_s:.0f} s"
            if self.timeout_s
            else ""
        )
        return (
            f"{what} has taken {waited:.0f} s so far, {waited / max(median, 1e-9):.0f}x the "
            f"median of the last {count} {kind} ({median:.3g} s): a process may be paused, "
            f"stuck or dead{timeout}"
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
