"""Independent GBM fits run side by side: in this process, in worker processes (loky) or on a Dask cluster.

Training a model group (a base condition, or a per-target task's target) is many independent fits: per member,
one per cross-validation fold (learning on the other folds' labelled rows, predicting the fold's rows) and one on
all labelled rows. A *batch* is one group's shared inputs (:class:`FitData`: its design matrix, labels, weights and
study ids) with its fits (:class:`Fit`); a runner takes batches from a lazy iterable and yields each fit's result
as it arrives (any order; the caller places it by its ``key``):

* :class:`SerialFits` runs them one after the other in this process;
* :class:`ProcessFits` runs them in ``jobs`` loky worker processes (joblib's ``externals.loky``, an executor
  of its own for the run). A batch's inputs are written once to a temporary file
  (``joblib.dump``), which every worker memory-maps (``joblib.load(mmap_mode="r")``): no worker receives the
  feature table or a copy of the design matrix through a pipe, and the file is deleted when the batch's last fit
  is done;
* :class:`DaskFits` runs them as tasks on a Dask cluster (``distributed.Client``): a batch's inputs are scattered
  once and the fits submitted with them.

Memory: a new batch is taken from the iterable (and so the next group's design matrix made) only when fewer fits
are pending than the runner has workers, so at most ``1 + ceil(workers / fits per batch)`` batches exist at once
(one with the default's 2 members x 6 fits and up to 12 workers); this process drops its copy of a batch's design
matrix as soon as it is written out or scattered.

Results do not depend on the runner: every fit is the same function (:func:`run_fit`) of the same values and
seeds, each with ``threads`` compute threads (its boosters' ``n_jobs``, BLAS on one), so serial, ``--jobs N`` and a
cluster give the same boosters bit for bit and the same predictions (tests/test_models_fits.py).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from radiospine.errors import UserError
from radiospine.models import cv
from radiospine.threads import single_threaded_blas, thread_budget

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitData:
    """What a group's fits share: ``X`` (n_rows, n_features), a float32 array or a DataFrame; ``y`` (n_rows,)
    int64 class indices, negative where there is no label; ``weight`` (n_rows,) float64 sample weights;
    ``groups`` (n_rows,) int64 study ids (early stopping holds out whole studies); ``prior_rows``
    (n_rows,) int64, for fits that boost from a prior (:attr:`Fit.prior`): the row of that prior's table each row
    takes (e.g. its level index), else None."""

    X: np.ndarray | pd.DataFrame
    y: np.ndarray
    weight: np.ndarray
    groups: np.ndarray
    prior_rows: np.ndarray | None = None


@dataclass(frozen=True)
class Fit:
    """One fit of ``make()`` on the rows ``train_rows`` (int positions into :class:`FitData`) with seed ``seed``
    (:func:`radiospine.models.cv.fit_grouped`: early stopping on held-out studies among those rows).

    ``predict_rows`` None: the result is the fitted estimator; else the result is its class probabilities of those
    rows, ``(len(predict_rows), n_classes)`` (:func:`radiospine.models.cv.class_proba`), and the estimator is
    dropped where it was fitted. ``key`` names the fit for the caller, e.g. ``(group, member, fold or None)``;
    ``make`` must be picklable (a top-level function or a :func:`functools.partial` of one). ``prior``: None, or a
    ``(n_prior_rows, n_classes)`` table of probabilities of every class index that the estimator boosts from and
    predicts from (:func:`radiospine.models.cv.fit_grouped`'s ``prior``), row ``data.prior_rows[i]`` for row ``i``.
    """

    key: tuple[Hashable, ...]
    make: Callable[[], Any]
    seed: int
    train_rows: np.ndarray
    predict_rows: np.ndarray | None = None
    n_classes: int = 0
    prior: np.ndarray | None = None


class FitFailed(Exception):
    """A fit raised: ``key`` is the :class:`Fit`'s key, ``error`` what it raised (also the ``__cause__``)."""

    def __init__(self, key: tuple[Hashable, ...], error: BaseException) -> None:
        super().__init__(f"fit {key}: {error}")
        self.key, self.error = key, error


def run_fit(data: FitData | str, fit: Fit, threads: int) -> tuple[Any, float]:
    """Run one fit (see :class:`Fit`) with ``threads`` compute threads (OpenMP; BLAS on one): ``(result, seconds)``.

    ``data`` is the batch's :class:`FitData`, or the path of a file holding it (``joblib.dump``), which is read
    memory-mapped. ``seconds`` is the fit's (and prediction's) wall time where it ran.
    """
    if isinstance(data, str):
        import joblib

        data = joblib.load(data, mmap_mode="r")
    started = time.perf_counter()
    with thread_budget(threads), single_threaded_blas():
        prior = None if fit.prior is None else fit.prior[np.asarray(data.prior_rows)]
        estimator = cv.fit_grouped(fit.make, data.X, data.y, data.weight, data.groups, fit.seed, rows=fit.train_rows,
                                   prior=prior)
        if fit.predict_rows is not None:
            result = cv.class_proba(estimator, cv.take_rows(data.X, fit.predict_rows), fit.n_classes,
                                    None if prior is None else prior[fit.predict_rows])
        else:
            result = estimator
    return result, time.perf_counter() - started


def fold_fits(key: tuple[Hashable, ...], make: Callable[[], Any], y: np.ndarray, fold: np.ndarray, seed: int,
              n_classes: int) -> list[Fit]:
    """The out-of-fold fits of one member (every row predicted by a model that never saw its study): for each fold
    ``k`` of ``fold`` ((n_rows,) fold index per row, constant within a study), a fit on the labelled rows
    (``y >= 0``) of the other folds with seed ``seed + k``, predicting every row of fold ``k`` (labelled or not).
    Keys are ``(*key, k)``."""
    labelled = y >= 0
    return [Fit((*key, int(k)), make, seed + int(k), np.flatnonzero(labelled & (fold != k)),
                np.flatnonzero(fold == k), n_classes)
            for k in np.unique(fold)]


class _Runner:
    """The batch loop shared by the runners; a subclass says how a batch is shared, a fit submitted and waited for.

    ``workers``: fits that run at once; ``threads``: compute threads per fit (the estimators' ``n_jobs``).
    """

    workers: int
    threads: int

    def run(self, batches: Iterable[tuple[FitData, Sequence[Fit]]]) -> Iterator[tuple[Fit, Any, float]]:
        """``(fit, result, seconds)`` for every fit of every batch, as each finishes (any order).

        Raises :class:`FitFailed` for the first fit that raises (the pending ones are cancelled).
        """
        batches = iter(batches)
        pending: dict[Any, tuple[int, Fit]] = {}
        shared: dict[int, list] = {}  # batch number -> [shared inputs, fits not yet done]
        number = 0
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < self.workers:
                    batch = next(batches, None)
                    if batch is None:
                        exhausted = True
                        break
                    handle = self._share(batch[0], number)
                    fits = batch[1]
                    del batch  # this process keeps no copy of the batch's design matrix beyond the handle
                    if not fits:
                        self._release(handle)
                        continue
                    shared[number] = [handle, len(fits)]
                    for fit in fits:
                        pending[self._submit(handle, fit)] = (number, fit)
                    number += 1
                if not pending:
                    return
                done = set(self._wait(list(pending)))
                for future in [future for future in pending if future in done]:  # in the order submitted
                    batch_number, fit = pending.pop(future)
                    try:
                        result, seconds = future.result()
                    except Exception as exc:
                        raise FitFailed(fit.key, exc) from exc
                    shared[batch_number][1] -= 1
                    if not shared[batch_number][1]:
                        self._release(shared.pop(batch_number)[0])
                    yield fit, result, seconds
        finally:
            for future in pending:
                future.cancel()
            for handle, _ in shared.values():
                self._release(handle)

    def _share(self, data: FitData, number: int) -> Any:
        raise NotImplementedError

    def _submit(self, handle: Any, fit: Fit) -> Any:
        raise NotImplementedError

    def _wait(self, futures: list) -> Iterable:
        return concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_COMPLETED).done

    def _release(self, handle: Any) -> None:
        """Free a batch's shared inputs (its fits are done or cancelled)."""


class SerialFits(_Runner):
    """Every fit in this process, one after the other (one batch at a time)."""

    def __init__(self, threads: int = 1) -> None:
        self.workers, self.threads = 1, threads

    def _share(self, data: FitData, number: int) -> FitData:
        return data

    def _submit(self, handle: FitData, fit: Fit) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            future.set_result(run_fit(handle, fit, self.threads))
        except Exception as exc:  # noqa: BLE001 -- raised again by future.result(), as from a worker
            future.set_exception(exc)
        return future


class ProcessFits(_Runner):
    """Fits in ``jobs`` loky worker processes, ``threads`` compute threads each; a batch's inputs go through a
    temporary file that the workers memory-map (module docstring). Use it as a context manager (the temporary
    folder, under ``TMPDIR``, is removed on exit)."""

    def __init__(self, jobs: int, threads: int = 1) -> None:
        from joblib.externals.loky import ProcessPoolExecutor

        if jobs < 1:
            raise ValueError(f"jobs must be at least 1, got {jobs}")
        self.workers, self.threads = jobs, threads
        # An executor of its own, not loky's reusable one: joblib.Parallel (the feature stage) reuses that one with
        # its own memory-mapping set-up and fails on an executor made without it.
        self._executor = ProcessPoolExecutor(max_workers=jobs)
        self._folder = Path(tempfile.mkdtemp(prefix="radiospine-fits-"))

    def __enter__(self) -> ProcessFits:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._executor.shutdown(wait=True, kill_workers=exc_info[0] is not None)
        shutil.rmtree(self._folder, ignore_errors=True)

    def _share(self, data: FitData, number: int) -> str:
        import joblib

        path = self._folder / f"batch_{number}.joblib"
        joblib.dump(data, path)
        return str(path)

    def _submit(self, handle: str, fit: Fit) -> concurrent.futures.Future:
        return self._executor.submit(run_fit, handle, fit, self.threads)

    def _release(self, handle: str) -> None:
        Path(handle).unlink(missing_ok=True)


class DaskFits(_Runner):
    """Fits as tasks on the Dask cluster at ``scheduler`` (``tcp://host:port``), ``threads`` compute threads each.
    Every worker needs the same radiospine; the inputs travel with the tasks (the work folder is not read there).
    Use it as a context manager (the client is closed on exit)."""

    def __init__(self, scheduler: str, threads: int = 1) -> None:
        from distributed import Client

        try:
            self._client = Client(scheduler, timeout="30s")
        except OSError as exc:
            raise UserError(f"cannot reach the Dask scheduler at {scheduler} ({exc}); start one "
                            f"(`dask scheduler`) or drop --scheduler") from None
        # the cluster's worker threads (each runs one fit at a time)
        self.workers = max(1, sum(self._client.nthreads().values()))
        self.threads = threads

    def __enter__(self) -> DaskFits:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._client.close()

    def _share(self, data: FitData, number: int) -> Any:
        return self._client.scatter(data, hash=False)

    def _submit(self, handle: Any, fit: Fit) -> Any:
        return self._client.submit(run_fit, handle, fit, self.threads, pure=False)

    def _wait(self, futures: list) -> Iterable:
        from distributed import wait

        return wait(futures, return_when="FIRST_COMPLETED").done

    def _release(self, handle: Any) -> None:
        handle.release()


FitRunner = SerialFits | ProcessFits | DaskFits


@contextlib.contextmanager
def fit_runner(jobs: int = 1, threads: int = 1, scheduler: str | None = None) -> Iterator[FitRunner]:
    """The runner for ``jobs`` worker processes (1: this process) or a Dask ``scheduler`` (overrides ``jobs``),
    ``threads`` compute threads per fit; closed (temporary files removed, client closed) on exit."""
    if scheduler is not None:
        with DaskFits(scheduler, threads) as runner:
            yield runner
    elif jobs > 1:
        with ProcessFits(jobs, threads) as runner:
            yield runner
    else:
        yield SerialFits(threads)

