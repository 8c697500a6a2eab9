"""Peak memory and CPU time of a process tree while a block of code runs, in total and per process."""

from __future__ import annotations

import os
import threading

import psutil


class TreeMonitor:
    """Peak RSS (bytes) and CPU seconds of this process plus all its descendants while the block runs.

    Sampled every ``interval`` seconds in a thread: RSS summed over the live processes (``peak_rss``, the tree's
    peak), each process's own peak RSS (``peak_rss_by_pid``) and its parent (``parent_by_pid``), CPU time as the
    last reading of every process seen (a worker that ends between two samples loses at most one interval, and
    a peak held for less than one interval can be missed).
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak_rss = 0
        self.peak_rss_by_pid: dict[int, int] = {}
        self.parent_by_pid: dict[int, int] = {}
        self._cpu_start: dict[int, float] = {}
        self._cpu_last: dict[int, float] = {}
        self._stop = threading.Event()

    @property
    def cpu_seconds(self) -> float:
        return sum(last - self._cpu_start.get(pid, 0.0) for pid, last in self._cpu_last.items())

    def descendants_of(self, pid: int) -> list[int]:
        """Every process seen below ``pid`` (children, their children, ...)."""
        found, frontier = [], [pid]
        while frontier:
            children = [child for child, parent in self.parent_by_pid.items() if parent in frontier]
            found += children
            frontier = children
        return found

    def _processes(self) -> list[psutil.Process]:
        me = psutil.Process(os.getpid())
        return [me, *me.children(recursive=True)]

    def _sample(self) -> None:
        total = 0
        for process in self._processes():
            try:
                with process.oneshot():
                    rss = process.memory_info().rss
                    times = process.cpu_times()
                    parent = process.ppid()
            except psutil.Error:  # a worker that just ended
                continue
            total += rss
            self._cpu_last[process.pid] = times.user + times.system
            self.peak_rss_by_pid[process.pid] = max(self.peak_rss_by_pid.get(process.pid, 0), rss)
            self.parent_by_pid.setdefault(process.pid, parent)
        self.peak_rss = max(self.peak_rss, total)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> TreeMonitor:
        for process in self._processes():
            times = process.cpu_times()
            self._cpu_start[process.pid] = times.user + times.system
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
