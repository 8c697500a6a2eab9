"""Compute threads per process: one budget for torch, BLAS/OpenMP and SimpleITK.

Thread pools that spin-wait (torch's intra-op pool, OpenMP) are much slower than one thread when the cores are
shared with other work: measured here, a U-Net training step took 3.2 s with torch's 2 threads on 2 busy cores
against 0.8 s with one. radiospine therefore runs its CPU compute with one thread per process by default and
gets parallelism from worker processes (``--jobs``); ``--threads`` raises it on an idle many-core machine.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator


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
    setting. OpenMP is left alone: the boosters set their own thread count (``models.n_jobs``).
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads N`` (default 1) for the commands that run torch on the CPU."""

    def positive(text: str) -> int:
        value = int(text)
        if value < 1:
            raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
        return value

    parser.add_argument("--threads", type=positive, default=1,
                        help="torch compute threads (default 1: fastest when the cores are shared with other work; "
                             "raise it on an idle machine with many cores)")
