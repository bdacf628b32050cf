"""The Dask executor on real clusters of local worker processes (CPU, tiny model): outputs identical
to the in-process run, a worker SIGKILLed while holding work, a scheduler and a worker started as
separate processes, a unit that fails every time, and the cluster settings."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_raster, read_raster, run_tiler
from test_errors import assert_no_output, assert_one_error

from tiler.errors import BadParameter, TilerError
from tiler.execution.cluster import ExecutionOptions
from tiler.execution.run import run_plan
from tiler.ldm.options import DiffusionOptions, RuntimeOptions
from tiler.tasks import plan_upscale

GRID = dict(tile=16, overlap=4, region=24, halo=4)
CLI_GRID = (
    "--tile",
    "16",
    "--overlap",
    "4",
    "--region",
    "24",
    "--halo",
    "4",
    "--steps",
    "3",
    "--decode-tile",
    "16",
    "--decode-halo",
    "4",
    "--device",
    "cpu",
)
DASK = Path(sys.executable).with_name("dask")


@pytest.fixture(scope="module")
def cluster():
    """Two one-thread worker processes (spawned, under nannies that restart them)."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=":0",
        silence_logs=logging.ERROR,
    ) as cluster:
        yield cluster


def in_process(src, dst, model, steps=3):
    """The reference: the same plan run by threads in this process."""
    plan = plan_upscale(
        src,
        dst,
        model=str(model),
        diffusion=DiffusionOptions(steps=steps, decode_tile=16, decode_halo=4),
        **GRID,
    )
    run_plan(
        plan,
        runtime=RuntimeOptions(device="cpu"),
        execution=ExecutionOptions(cluster="threads", workers=2),
    )
    return read_raster(dst)[0]


def test_local_cluster_gives_the_in_process_output(tmp_path, tiny_model):
    src = make_raster(tmp_path / "in.tif", width=48, height=40, dtype="uint16")
    result = run_tiler(
        "upscale",
        src,
        tmp_path / "dask.tif",
        "--model",
        tiny_model,
        *CLI_GRID,
        "--cluster",
        "local",
        "--workers",
        "2",
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    expected = in_process(src, tmp_path / "threads.tif", tiny_model)
    np.testing.assert_array_equal(read_raster(tmp_path / "dask.tif")[0], expected)
    assert not Path(f"{tmp_path / 'dask.tif'}.tiler").exists()


def test_worker_killed_while_holding_work(tmp_path, tiny_model, cluster):
    """SIGKILL the worker process that is running a region; its nanny starts a new one, the region
    runs again, and the output is the one of a run without faults."""
    from distributed import Client

    src = make_raster(tmp_path / "in.tif", width=72, height=72, dtype="uint8")
    out = tmp_path / "out.tif"
    plan = plan_upscale(
        src,
        out,
        model=str(tiny_model),
        diffusion=DiffusionOptions(steps=8, decode_tile=16, decode_halo=4),
        **GRID,
    )
    execution = ExecutionOptions(scheduler=cluster.scheduler_address)
    run = threading.Thread(
        target=lambda: run_plan(plan, runtime=RuntimeOptions(device="cpu"), execution=execution)
    )
    with Client(cluster) as client:
        pids_before = client.run(os.getpid)
        run.start()
        victim = wait_for_a_worker_running(client, "tiler-denoise", timeout=120)
        os.kill(pids_before[victim], signal.SIGKILL)
        run.join(timeout=300)
        assert not run.is_alive(), "the run did not finish after a worker was killed"
        assert out.exists(), "the run failed after a worker was killed"
        pids_after = client.run(os.getpid)
    assert pids_before[victim] not in pids_after.values()  # the killed process is gone
    np.testing.assert_array_equal(
        read_raster(out)[0], in_process(src, tmp_path / "reference.tif", tiny_model, steps=8)
    )


def wait_for_a_worker_running(client, key_prefix: str, timeout: float) -> str:
    """The address of a worker that is processing a task whose key starts with ``key_prefix``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for worker, keys in client.processing().items():
            if any(str(key).startswith(key_prefix) for key in keys):
                return worker
        time.sleep(0.05)
    pytest.fail(f"no worker ran a {key_prefix} task within {timeout} s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def separate_scheduler_and_worker(tmp_path):
    """`dask scheduler` and `dask worker` as processes of their own, as a user starts them."""
    address = f"tcp://127.0.0.1:{free_port()}"
    logs = tmp_path / "dask.log"
    with open(logs, "w") as log:
        scheduler = subprocess.Popen(
            [
                DASK,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                address.rsplit(":", 1)[1],
                "--no-dashboard",
            ],
            stdout=log,
            stderr=log,
        )
        worker = subprocess.Popen(
            [DASK, "worker", address, "--nthreads", "1", "--nworkers", "1", "--no-dashboard"],
            stdout=log,
            stderr=log,
        )
    try:
        yield address
    finally:
        for process in (worker, scheduler):
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def test_joins_a_running_scheduler(tmp_path, tiny_model, separate_scheduler_and_worker):
    src = make_raster(tmp_path / "in.tif", width=40, height=30, dtype="uint8")
    result = run_tiler(
        "upscale",
        src,
        tmp_path / "dask.tif",
        "--model",
        tiny_model,
        *CLI_GRID,
        "--scheduler",
        separate_scheduler_and_worker,
    )
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(
        read_raster(tmp_path / "dask.tif")[0], in_process(src, tmp_path / "threads.tif", tiny_model)
    )


def test_unit_failing_every_time_stops_the_run_naming_it(tmp_path, cluster):
    """The input is replaced by a non-raster after planning: every region fails on the workers,
    is retried, and the run stops with the region and the cause, not a hang."""
    src = make_raster(tmp_path / "in.tif", width=64, height=64, dtype="uint8")
    out = tmp_path / "out.tif"
    plan = plan_upscale(src, out, model="bicubic", tile=16, region=16)
    src.write_bytes(b"not a raster any more")
    started = time.monotonic()
    with pytest.raises(TilerError) as raised:
        run_plan(plan, execution=ExecutionOptions(scheduler=cluster.scheduler_address, retries=1))
    message = str(raised.value)
    assert message.startswith("process of region (") and "failed: " in message
    assert str(src) in message and "not a raster" in message.lower(), message
    assert time.monotonic() - started < 120
    assert not out.exists() and not Path(f"{out}.partial").exists()


def test_unreachable_scheduler_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DASK_TILER__CONNECT_TIMEOUT", "2")  # Dask config from the environment
    src = make_raster(tmp_path / "in.tif")
    address = f"tcp://127.0.0.1:{free_port()}"
    result = run_tiler("upscale", src, tmp_path / "out.tif", "--scheduler", address)
    assert_one_error(result, 1, f"--scheduler {address}", "cannot connect")
    assert_no_output(tmp_path / "out.tif", workdir=False)


def test_cluster_settings_come_from_dask_config():
    import dask.config

    with dask.config.set({"tiler": {"cluster": "local", "workers": 3, "retries": 0}}):
        options = ExecutionOptions.from_config(workers=5)
    assert (options.cluster, options.workers, options.retries) == ("local", 5, 0)  # flags win
    with dask.config.set({"tiler": {"cluster": "yarn"}}), pytest.raises(BadParameter) as raised:
        ExecutionOptions.from_config()
    assert "cluster" in str(raised.value) and "'yarn'" in str(raised.value)


def test_missing_cluster_extra_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)  # as if not installed
    src = make_raster(tmp_path / "in.tif")
    plan = plan_upscale(src, tmp_path / "out.tif", model="bicubic")
    with pytest.raises(BadParameter) as raised:
        run_plan(plan, execution=ExecutionOptions(cluster="slurm"))
    assert "dask-jobqueue" in str(raised.value) and "ldm-tiler[slurm]" in str(raised.value)


def test_inpaint_and_synthesis_on_a_cluster_give_the_in_process_output(tmp_path, cluster):
    """The model-directory tasks on worker processes, their one-unit statistics stages included
    (the inpainting first stage shares its GroupNorm statistics through the workdir)."""
    from test_inpaint import GRID as SMALL_GRID
    from test_inpaint import mask_file
    from test_synthesize import land_cover
    from tiny_models import save_tiny_inpaint_model, save_tiny_synthesis_model

    from tiler.raster.mask import MaskSpec
    from tiler.tasks.inpaint import plan_inpaint
    from tiler.tasks.synthesis import plan_synthesize

    options = DiffusionOptions(steps=2, decode_tile=8, decode_halo=2, device="cpu")
    src = make_raster(tmp_path / "in.tif", width=40, height=36)
    mask, _ = mask_file(tmp_path / "mask.tif", 36, 40, [(6, 30, 10, 20)])
    labels, _ = land_cover(tmp_path / "labels.tif", values=(0, 1, 2, 3))
    inpaint_model = save_tiny_inpaint_model(tmp_path / "inpaint")
    synthesis_model = save_tiny_synthesis_model(tmp_path / "synthesis", classes=4)
    plans = {
        "inpaint": lambda out: plan_inpaint(
            src,
            out,
            model=str(inpaint_model),
            diffusion=options,
            mask=MaskSpec("file", str(mask)),
            **SMALL_GRID,
        ),
        "synthesize": lambda out: plan_synthesize(
            labels, out, model=str(synthesis_model), diffusion=options, **SMALL_GRID
        ),
    }
    for task, plan_for in plans.items():
        outputs = []
        for where in ("threads", "dask"):
            out = tmp_path / f"{task}-{where}.tif"
            execution = (
                ExecutionOptions(cluster="threads", workers=2)
                if where == "threads"
                else ExecutionOptions(scheduler=cluster.scheduler_address)
            )
            report = run_plan(
                plan_for(out), runtime=RuntimeOptions(device="cpu"), execution=execution
            )
            outputs.append(read_raster(out)[0])
        np.testing.assert_array_equal(outputs[0], outputs[1])
    assert [stage.name for stage in report.stages][:2] == [
        "denoise",
        "assemble",
    ]  # synthesis: no encoder


def test_workers_keep_one_model_across_runs_and_drop_each_runs_plugin(
    tmp_path, tiny_model, cluster
):
    """A workflow's files reach the workers as one plan after the other: each worker loads the
    model once for all of them, and no run leaves its model plugin (and its model) behind."""
    from distributed import Client

    def loads():
        from tiler.ldm.runner import _loaded_runner

        return _loaded_runner.cache_info().misses

    def plugins(dask_worker):
        return [name for name in dask_worker.plugins if name.startswith("tiler-model")]

    execution = ExecutionOptions(scheduler=cluster.scheduler_address)
    with Client(cluster) as client:
        counts = []
        for number in range(2):
            src = make_raster(tmp_path / f"in{number}.tif", width=40, height=32, seed=number)
            plan = plan_upscale(
                src,
                tmp_path / f"out{number}.tif",
                model=str(tiny_model),
                diffusion=DiffusionOptions(steps=2, decode_tile=16, decode_halo=4),
                **GRID,
            )
            run_plan(plan, runtime=RuntimeOptions(device="cpu"), execution=execution)
            counts.append(client.run(loads))
            assert all(not names for names in client.run(plugins).values())
    assert counts[1] == counts[0]  # the second plan's plugin found the model loaded
    assert all(count >= 1 for count in counts[0].values())
