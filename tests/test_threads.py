"""radiospine.threads: one compute-thread budget for torch, BLAS and SimpleITK, the --threads and --jobs flags, and
the resource budget (processes x threads) sized from the command line, the config and the machine."""

import argparse

import pytest
import SimpleITK as sitk
import torch

from radiospine.config import budget_from_arguments, load_config
from radiospine.errors import ConfigError
from radiospine.threads import (
    add_jobs_argument,
    add_threads_argument,
    machine_cores,
    resource_budget,
    single_threaded_blas,
    thread_budget,
)


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


def test_the_budget_fills_free_cores_and_keeps_one_thread_on_a_busy_machine():
    idle = resource_budget(cores=16, load=0.2)
    assert (idle.jobs, idle.threads, idle.free) == (16, 1, 16)
    busy = resource_budget(cores=2, load=11.7)  # shared: today's one process of one thread
    assert (busy.jobs, busy.threads, busy.free) == (1, 1, 1)
    assert (resource_budget(cores=16, load=4.4).free, resource_budget(cores=2, load=0.6).free) == (12, 1)
    four = resource_budget(jobs=4, cores=16, load=0.0)  # the threads share out what the processes leave
    assert (four.jobs, four.threads) == (4, 4)
    given = resource_budget(jobs=3, threads=5, cores=2, load=9.0)
    assert (given.jobs, given.threads) == (3, 5)
    assert resource_budget(jobs=32, cores=16, load=0.0).threads == 1
    with pytest.raises(ValueError, match="jobs must be at least 1"):
        resource_budget(jobs=0)
    here = resource_budget()
    assert 1 <= here.free <= here.cores == machine_cores() and here.jobs == here.free


def test_command_line_then_config_then_machine():
    config = load_config(overrides=["resources.jobs=3"])
    jobs_flag = argparse.ArgumentParser()
    add_jobs_argument(jobs_flag, "work")
    jobs_flag.add_argument("--threads", type=int, default=None)
    assert budget_from_arguments(jobs_flag.parse_args(["--jobs", "5"]), config).jobs == 5
    assert budget_from_arguments(jobs_flag.parse_args([]), config).jobs == 3
    assert 1 <= budget_from_arguments(jobs_flag.parse_args([]), load_config()).jobs <= machine_cores()
    threads = load_config(overrides=["resources.threads=2"])
    assert budget_from_arguments(jobs_flag.parse_args(["--threads", "7"]), threads, threads=True).threads == 7
    assert budget_from_arguments(jobs_flag.parse_args([]), threads, threads=True).threads == 2
    # a command whose --threads is torch's does not hand it to the budget
    assert budget_from_arguments(jobs_flag.parse_args(["--threads", "7"]), threads).threads == 2
    with pytest.raises(ConfigError, match=r"resources\.jobs"):
        load_config(overrides=["resources.jobs=0"])
