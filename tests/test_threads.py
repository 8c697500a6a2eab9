"""radiospine.threads: one compute-thread budget for torch, BLAS and SimpleITK, and the --threads flag."""

import argparse

import pytest
import SimpleITK as sitk
import torch

from radiospine.threads import add_threads_argument, single_threaded_blas, thread_budget


def test_thread_budget_limits_torch_and_simpleitk_inside_and_restores_after():
    torch_before = torch.get_num_threads()
    sitk_before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    with thread_budget(1):
        assert torch.get_num_threads() == 1
        assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == 1
    assert torch.get_num_threads() == torch_before
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == sitk_before


def test_thread_budget_restores_after_an_error():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError), thread_budget(1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before


def test_threads_flag_defaults_to_one_and_refuses_zero(capsys):
    parser = argparse.ArgumentParser()
    add_threads_argument(parser)
    assert parser.parse_args([]).threads == 1
    assert parser.parse_args(["--threads", "4"]).threads == 4
    with pytest.raises(SystemExit):
        parser.parse_args(["--threads", "0"])
    assert "must be at least 1" in capsys.readouterr().err


def test_single_threaded_blas_inside_and_restored_after():
    from threadpoolctl import threadpool_info

    def blas_threads():
        return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]

    before = blas_threads()
    with single_threaded_blas():
        assert all(n == 1 for n in blas_threads())
    assert blas_threads() == before
