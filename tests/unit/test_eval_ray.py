"""Evaluation on a Ray cluster (a local one here, 2 actors): the same episodes, batches and tables as in-process;
an actor that fails, hangs or dies ends the run with one line naming the task and seed; no actor outlives the pool."""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import numpy as np
import pytest

pytest.importorskip("metaworld")
ray = pytest.importorskip("ray")

from test_eval_workers import TinyRandomPolicy  # noqa: E402

from vlaforge.eval.envs import ENVS  # noqa: E402
from vlaforge.eval.ray_pool import RayEnvPool, _check_reachable  # noqa: E402
from vlaforge.eval.runner import EvalConfig, run_eval  # noqa: E402
from vlaforge.types import image_key  # noqa: E402


def test_an_address_nobody_answers_at_is_a_one_line_error_not_minutes_of_retries():
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionError, match=rf"^ray: cannot reach the Ray cluster at '127.0.0.1:{port}' "
                                              r"\(ConnectionRefusedError: "):
        _check_reachable(f"127.0.0.1:{port}")
    for address in ("local", "auto", "ray://head:10001"):  # left to ray.init
        _check_reachable(address)


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def _eval(tmp_path, name: str, policy: TinyRandomPolicy, **kw) -> dict:
    env = ENVS.get("metaworld")(image_size=32, max_steps=12)
    cfg = EvalConfig(tasks="reach", episodes=3, parallel_envs=2, videos=0, env=env, out=str(tmp_path / name), **kw)
    run_eval(cfg, show_progress=False, policy=policy)
    return json.loads((tmp_path / name / "eval.json").read_text())


def test_ray_actors_give_the_same_episodes_batches_and_table_as_one_process(cluster, tmp_path):
    here, there = TinyRandomPolicy(), TinyRandomPolicy()
    a = _eval(tmp_path, "local", here)
    b = _eval(tmp_path, "ray", there, ray="local", workers=2)  # joins this process's Ray session: 2 actors
    assert b["config"]["ray"] == "local" and a["config"]["ray"] == ""
    assert a["episodes"] == b["episodes"] and a["tasks"] == b["tasks"] and a["expert"] == b["expert"]
    assert [(e["task"], e["seed"]) for e in b["episodes"]] == [("reach-v3", s) for s in (100_000, 100_001, 100_002)]
    assert [(e["task"], e["seed"]) for e in b["expert"]["episodes"]] == [(e["task"], e["seed"]) for e in b["episodes"]]
    # the policy ran here, on the same observations in the same batches (3 episodes on 2 slots: one restarts)
    assert len(here.batches) == len(there.batches) > 5
    for x, y in zip(here.batches, there.batches, strict=True):
        np.testing.assert_array_equal(x, y)
    assert {len(x) for x in there.batches} >= {1, 2}
    assert ray.is_initialized()  # the pool left the session it joined running


def _pid(actor) -> int:
    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))


def _gone(pid: int, wait: float = 20.0) -> bool:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def test_failing_hanging_and_dead_actors_are_one_line_errors_and_none_is_left(cluster):
    env = ENVS.get("metaworld")(image_size=32)
    with pytest.raises(ValueError, match=r"^workers: the Ray cluster has 2 CPUs, expected >= 3"):
        RayEnvPool(env, n=3, workers=3)
    pool = RayEnvPool(env, n=2, workers=2, timeout=60)
    pids = [_pid(a) for a in pool.actors]
    try:
        assert pool.make("reach-v3").robot.action_dim == 4
        obs = pool.reset([0, 1], [7, 8])
        assert obs[1][image_key("scene")].shape == (32, 32, 3) and obs[1][image_key("scene")].flags.writeable
        with pytest.raises(RuntimeError, match=r"^eval worker 1 \(task reach-v3, seed 8\): step failed: ValueError: "
                                               r"metaworld action: expected shape \(4,\)") as e:
            pool.step([1], [np.zeros(3)])
        assert "\n" not in str(e.value)
        pool.timeout = 1.5
        os.kill(pids[0], signal.SIGSTOP)
        with pytest.raises(RuntimeError, match=r"^eval worker 0 \(Ray actor\) did not answer step within 2 s "
                                               r"\(task reach-v3, seed 7\)"):
            pool.step([0], [np.zeros(4)])
        os.kill(pids[0], signal.SIGKILL)
        pool.timeout = 60
        with pytest.raises(RuntimeError, match=r"^eval worker 0 \(Ray actor\) died during step \(task reach-v3, "
                                               r"seed 7\): ") as e:
            pool.step([0], [np.zeros(4)])
        assert "\n" not in str(e.value)
    finally:
        pool.close(graceful=False)
    assert pool.actors == [] and all(_gone(p) for p in pids)
