"""The Ray executor, for real: a local Ray cluster (a head and a worker node started on this machine with
``ray start``; Ray binds the machine's own network address, not only 127.0.0.1) trains a sweep whose runs
land in the shared sweep directory; a sweep whose driver is killed resumes; SIGTERM to the driver flushes
every run, exits 143 and says how to resume.

Slow (starting Ray takes a while): ``pytest -m slow tests/test_ray.py``; needs ``pip install 'grokinterp[ray]'``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import grokinterp as g
from grokinterp.store.integrity import verify

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """``ray start --block`` for a head and for a worker node (1 CPU each), stopped by their process ids."""
    exe = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    port = _free_port()
    tmp = tmp_path_factory.mktemp("ray")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    common = ["--block", "--num-cpus=1", "--num-gpus=0", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    head = subprocess.Popen([exe, "start", "--head", f"--port={port}", "--include-dashboard=false",
                             f"--temp-dir={tmp}", *common], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"127.0.0.1:{port}"
    worker = None
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            r = subprocess.run([exe, "status", f"--address={address}"], capture_output=True, text=True, env=env)
            if r.returncode == 0:
                break
            time.sleep(2)
        else:
            pytest.fail("the Ray head did not start")
        worker = subprocess.Popen([exe, "start", f"--address={address}", *common], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        while time.time() < deadline:
            r = subprocess.run([exe, "status", f"--address={address}"], capture_output=True, text=True, env=env)
            if r.stdout.count("node_") >= 2:
                break
            time.sleep(2)
        else:
            pytest.fail("the Ray worker node did not join")
        yield address
    finally:
        ray.shutdown()
        for proc in (worker, head):  # ray start --block stops its own processes on SIGTERM
            if proc is not None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in (worker, head):
            if proc is not None:
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)


def _spec(epochs: int = 200) -> dict:
    return {"preset": "tiny", "fixed": {"p": 23, "epochs": epochs, "every": 20, "log_early": 0, "flush_every": 2},
            "grid": {"weight_decay": [0.5, 2.0]}, "seeds": [0, 1], "options": {"max_stack": 2}}


def _same(a, b) -> bool:
    return all(torch.equal(a.stack(k), b.stack(k)) for k in a.stacks()) and np.array_equal(
        a.metrics.to_numpy(), b.metrics.to_numpy(), equal_nan=True)


def test_a_sweep_on_a_local_ray_cluster_writes_every_run(cluster, tmp_path):
    ref = g.sweep(_spec(), tmp_path / "local", progress=False)
    sw = g.sweep(_spec(), tmp_path / "ray", progress=False, executor="ray", ray_address=cluster)
    assert sw.finished and len(sw.runs()) == 4
    for name, run in sw.runs().items():
        assert verify(run.path).ok and run.info["stack"]["size"] == 2
        assert _same(run, ref.run(name))  # the same stacks, one thread: bit-identical to the local executor
    # both nodes took a job (one CPU each, two jobs)
    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(nodes) == 2


_DRIVER = textwrap.dedent("""
    import json, sys, grokinterp as g
    g.sweep(json.loads(sys.argv[1]), sys.argv[2], progress=False, executor="ray", ray_address=sys.argv[3])
""")


def test_a_sweep_whose_driver_is_killed_resumes(cluster, tmp_path):
    spec = _spec(epochs=600)
    ref = g.sweep(spec, tmp_path / "local", progress=False)
    out = tmp_path / "ray"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    driver = subprocess.Popen([sys.executable, "-c", _DRIVER, json.dumps(spec), str(out), cluster], env=env)
    deadline = time.time() + 300
    while time.time() < deadline and driver.poll() is None:
        progs = [json.loads(p.read_text()) for p in out.glob("runs/*/progress.json")]
        if any(p["epoch"] >= 100 for p in progs):
            break
        time.sleep(0.2)
    driver.send_signal(signal.SIGKILL)  # the tasks it owned die with it
    driver.wait()
    time.sleep(3)
    sw = g.load_sweep(out)
    assert not sw.finished
    sw = g.sweep(out, progress=False, executor="ray", ray_address=cluster)
    assert sw.finished
    for name, run in sw.runs().items():
        assert verify(run.path).ok and _same(run, ref.run(name))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_to_the_driver_flushes_every_run_and_says_how_to_resume(cluster, tmp_path, sig):
    """What batch schedulers send on pre-emption (SIGTERM), and Ctrl-C (SIGINT): as on the local executor."""
    # flush_every beyond the schedule: nothing is flushed before the end unless the stop flushes it
    spec = {**_spec(epochs=4000), "fixed": {**_spec()["fixed"], "epochs": 4000, "flush_every": 1000}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = tmp_path / "ray"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    driver = subprocess.Popen([sys.executable, "-m", "grokinterp", "sweep", str(tmp_path / "spec.json"), "--out",
                               str(out), "--executor", "ray", "--ray-address", cluster, "--no-progress"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and driver.poll() is None and len(list(out.glob("runs/*/run.json"))) < 2:
        time.sleep(0.2)
    time.sleep(3)  # both tasks are training
    assert driver.poll() is None and not list(out.glob("runs/*/progress.json"))
    driver.send_signal(sig)
    _, err = driver.communicate(timeout=180)
    assert driver.returncode == 128 + sig, err  # on SIGTERM Ray's own handler aborted it (134), nothing flushed
    assert err.strip().splitlines()[-1] == (f"grokinterp sweep: sweep interrupted; every run is saved, continue with "
                                            f"`grokinterp sweep --resume {out}`")
    flushed = [json.loads(p.read_text()) for p in out.glob("runs/*/progress.json")]
    assert len(flushed) >= 2 and all(0 < p["epoch"] < 4000 for p in flushed), flushed
    assert all(verify(p.parent).ok for p in out.glob("runs/*/progress.json"))
