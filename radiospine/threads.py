"""The resource budget (worker processes x compute threads) and the compute threads of a process.

Thread pools that spin-wait (torch's intra-op pool, OpenMP) are much slower than one thread when the cores are
shared with other work: measured here, a U-Net training step took 3.2 s with torch's 2 threads on 2 busy cores
against 0.8 s with one. radiospine therefore runs its CPU compute with one thread per process by default and
gets parallelism from worker processes (``--jobs``).

:func:`resource_budget` sizes a run: the worker processes and the threads per process given on the command line
(``--jobs``, ``--threads``) or in the config (``resources.jobs``, ``resources.threads``) win; what is not given is
sized from the *free* cores, the cores this process may run on (``os.sched_getaffinity``) less the 1-minute load
average (``os.getloadavg``), rounded, at least 1: the processes fill the free cores, and the threads share out what
the processes leave (``free // jobs``). A busy or shared machine so gets today's one process of one thread, an
idle one is filled. The budget never changes results: the feature stage's per-study work runs one thread per
process whatever the budget (torch splits a convolution's sums by thread), the number of processes only decides
where the same work runs, and the boosters give the same models bit for bit with any thread count
(tests/test_models_fits.py). torch's threads in the localiser do change its last bits, so ``train-localizer``,
``localize`` and ``predict`` take them from ``--threads`` only (default 1), never from the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass


@contextlib.contextmanager
def thread_budget(threads: int) -> Iterator[None]:
    """Limit the compute threads of this process to ``threads`` inside the block, and restore them after.

    Covers BLAS/OpenMP pools (threadpoolctl), torch's intra-op pool and SimpleITK's filters (ITK uses every
    core by default), so that ``jobs`` worker processes do not each start one thread per core.
    """
    from threadpoolctl import threadpool_limits

    threads = max(1, int(threads))
    torch = sys.modules.get("torch")
    sitk = sys.modules.get("SimpleITK")
    torch_before = torch.get_num_threads() if torch is not None else None
    sitk_before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() if sitk is not None else None
    limits = threadpool_limits(limits=threads)
    try:
        if torch is not None:
            torch.set_num_threads(threads)
        if sitk is not None:
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
        yield
    finally:
        limits.restore_original_limits()
        if torch is not None:
            torch.set_num_threads(torch_before)
        if sitk is not None:
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(sitk_before)


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """BLAS (numpy's and scipy's matrix products) on one thread inside the block, and restored after.

    A multi-threaded BLAS may split a sum among its threads, and the last bits of the result then depend on
    their number (``OPENBLAS_NUM_THREADS``, the machine's cores). The model stage's numpy and scipy work
    (calibration, blending, scoring) is small, so one thread costs nothing and makes it independent of that
    setting. OpenMP is left alone: the boosters set their own thread count (their ``n_jobs``, the budget's threads).
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads N`` (default 1) for the commands that run torch on the CPU."""
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch compute threads (default 1: fastest when the cores are shared with other work; "
                             "raise it on an idle machine with many cores)")


def positive_int(text: str) -> int:
    """An ``argparse`` type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def machine_cores() -> int:
    """The cores this process may run on (its CPU affinity; the CPU count where affinity is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass(frozen=True)
class ResourceBudget:
    """A run's budget: ``jobs`` worker processes of ``threads`` compute threads each, decided on a machine with
    ``cores`` usable cores at 1-minute load average ``load`` (``free`` cores: ``cores - load``, rounded, >= 1)."""

    jobs: int
    threads: int
    cores: int
    load: float
    free: int

    def as_dict(self) -> dict[str, int | float]:
        return asdict(self)


def resource_budget(jobs: int | None = None, threads: int | None = None, *, cores: int | None = None,
                    load: float | None = None) -> ResourceBudget:
    """The budget for ``jobs`` processes and ``threads`` threads per process, each None to size it from the free
    cores (module docstring). ``cores`` and ``load`` default to this machine's (:func:`machine_cores`,
    ``os.getloadavg()[0]``)."""
    for name, value in (("jobs", jobs), ("threads", threads)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    cores = machine_cores() if cores is None else cores
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:  # no load average on this platform: take the machine as idle
            load = 0.0
    free = max(1, min(cores, math.floor(cores - load + 0.5)))
    jobs = free if jobs is None else jobs
    threads = max(1, free // jobs) if threads is None else threads
    return ResourceBudget(jobs=jobs, threads=threads, cores=cores, load=round(load, 2), free=free)


def add_jobs_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """``--jobs N`` (default: the budget's, from the config or the free cores) for ``what`` runs in processes."""
    parser.add_argument("--jobs", type=positive_int, default=None,
                        help=f"worker processes for {what} (default: resources.jobs, else the free cores: the "
                             f"cores less the load average; results do not depend on it)")
