"""The one chunk executor (vlaforge.chunking.ActionChunker): receding horizon and ACT temporal ensembling."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from vlaforge.chunking import ActionChunker
from vlaforge.eval.rollout import evaluate
from vlaforge.inference import ActionChunker as FromInference
from vlaforge.serve.client import ActionChunkBroker
from vlaforge.types import OBS_STATE, RobotSpec


def chunk_at(s: int, h: int = 3) -> np.ndarray:
    """The hand-made chunk predicted at step s: its action for step s + j is 100 s + j (1-d actions)."""
    return (100.0 * s + np.arange(h, dtype=np.float64))[:, None]


def run(chunker: ActionChunker, steps: int, h: int = 3) -> tuple[list[float], list[int]]:
    acts, queried = [], []
    for t in range(steps):
        if chunker.needs_chunk:
            chunker.push(chunk_at(t, h))
            queried.append(t)
        acts.append(float(chunker.pop()[0]))
    return acts, queried


def test_one_chunk_queue_for_local_and_remote():
    assert FromInference is ActionChunker
    assert isinstance(ActionChunkBroker(type("P", (), {"chunk": 3, "exec_steps": 2})()).chunker, ActionChunker)


def test_temporal_ensemble_weights_oldest_first_and_alignment_exact():
    # temperature ln 2: weights 1, 1/2, 1/4 for the oldest, second oldest, newest prediction of a step
    c = ActionChunker(exec_steps=1, ensemble=3, temperature=math.log(2))
    np.testing.assert_allclose(c.weights(3), [4 / 7, 2 / 7, 1 / 7], rtol=1e-12)
    acts, queried = run(c, 5)
    assert queried == [0, 1, 2, 3, 4]  # ensembling queries the policy every step
    # step 0: chunk 0 only -> 0 ; step 1: chunk 0 says 1, chunk 1 says 100 -> (2*1 + 100)/3
    # step 2: chunks 0, 1, 2 say 2, 101, 200 -> (4*2 + 2*101 + 200)/7
    # step 3: chunk 0 has run out; chunks 1, 2, 3 say 102, 201, 300 -> (4*102 + 2*201 + 300)/7
    expect = [0.0, 34.0, 410 / 7, 1110 / 7, 1810 / 7]
    np.testing.assert_allclose(acts, expect, rtol=1e-12)


def test_act_default_temperature_and_window():
    c = ActionChunker(exec_steps=1, ensemble=4)  # ACT / LeRobot: 0.01
    w = np.exp(-0.01 * np.arange(4))
    np.testing.assert_allclose(c.weights(4), w / w.sum(), rtol=1e-12)
    assert np.all(np.diff(c.weights(4)) < 0)  # the oldest prediction weighs most
    # K = 2 of a 3-action chunk: only the two most recent predictions of a step are averaged
    acts, _ = run(ActionChunker(1, ensemble=2, temperature=0.0), 4)
    np.testing.assert_allclose(acts, [0.0, (1 + 100) / 2, (101 + 200) / 2, (201 + 300) / 2], rtol=1e-12)
    # K = 1: each step executes the first action of its own chunk; a negative temperature favours the newest
    assert run(ActionChunker(1, ensemble=1), 3)[0] == [0.0, 100.0, 200.0]
    newest = ActionChunker(1, ensemble=3, temperature=-math.log(2)).weights(3)
    np.testing.assert_allclose(newest, [1 / 7, 2 / 7, 4 / 7], rtol=1e-12)


def test_receding_horizon_unchanged_and_reset():
    c = ActionChunker(exec_steps=2)
    acts, queried = run(c, 5)
    assert acts == [0.0, 1.0, 200.0, 201.0, 400.0] and queried == [0, 2, 4]
    c.reset()
    assert c.needs_chunk and c.t == 0
    e = ActionChunker(1, ensemble=3)
    run(e, 2)
    e.reset()
    assert run(e, 1)[0] == [0.0]  # nothing of the last episode is averaged in


def test_bad_chunks_and_options_are_refused():
    with pytest.raises(ValueError, match="exec_steps"):
        ActionChunker(0)
    with pytest.raises(ValueError, match="ensemble"):
        ActionChunker(1, ensemble=-1)
    with pytest.raises(ValueError, match="shorter than ensemble=4"):
        ActionChunker(1, ensemble=4).push(chunk_at(0))
    c = ActionChunker(1, ensemble=2)
    c.push(chunk_at(0))
    with pytest.raises(ValueError, match="already pushed at step 0"):
        c.push(chunk_at(0))
    with pytest.raises(IndexError, match="push a chunk first"):
        ActionChunker(1, ensemble=2).pop()


class Counting:
    """A fake policy: the chunk for an observation at step t holds actions 100 t + j."""

    chunk, exec_steps = 3, 2

    def __init__(self) -> None:
        self.calls = 0
        self.robot = RobotSpec(cameras={}, state_dim=1, action_dim=1)

    def infer(self, obs: dict[str, Any]) -> dict[str, np.ndarray]:
        return {"actions": self.infer_batch([obs])[0]}

    def infer_batch(self, observations: list[dict[str, Any]]) -> np.ndarray:
        self.calls += len(observations)
        return np.stack([chunk_at(int(o[OBS_STATE][0])) for o in observations])


def test_broker_ensembles_like_the_chunker():
    policy = Counting()
    broker = ActionChunkBroker(policy, ensemble=3, temperature=math.log(2))
    acts = [float(broker.act({OBS_STATE: np.array([t])})[0]) for t in range(4)]
    np.testing.assert_allclose(acts, [0.0, 34.0, 410 / 7, 1110 / 7], rtol=1e-12)
    assert policy.calls == broker.requests == 4
    with pytest.raises(ValueError, match="ensemble: expected 0..3"):
        ActionChunkBroker(policy, ensemble=4)


class StepEnv:
    """A fake env whose state is the step count; it records the actions it receives."""

    def __init__(self, log: list, renders: list) -> None:
        self.robot, self.max_steps, self.fps = RobotSpec(cameras={}, state_dim=1, action_dim=1), 4, 10
        self.log, self.renders = log, renders

    def reset(self, seed: int, render: bool = True) -> dict[str, Any]:
        self.t = 0
        return {OBS_STATE: np.array([0.0])}

    def step(self, action: np.ndarray, render: bool = True) -> tuple[dict[str, Any], bool, dict]:
        self.log.append(float(action[0]))
        self.renders.append(render)
        self.t += 1
        return ({OBS_STATE: np.array([float(self.t)])} if render else {}), False, {}  # as the real envs

    def close(self) -> None:
        pass


class StepEnvConfig:
    type = "steps"

    def __init__(self) -> None:
        self.log: list[float] = []
        self.renders: list[bool] = []

    def make(self, task: str) -> StepEnv:
        return StepEnv(self.log, self.renders)


@pytest.mark.parametrize(("ensemble", "expect", "calls", "renders"), [
    (0, [0.0, 1.0, 200.0, 201.0], 2, [False, True, False, True]),  # receding horizon, exec_steps 2
    (3, [0.0, 34.0, 410 / 7, 1110 / 7], 4, [True] * 4),  # temporal ensemble, every step
])
def test_evaluate_executes_through_the_chunker(ensemble, expect, calls, renders):
    """... and renders only the observations the policy reads (mid-chunk frames are skipped)."""
    policy, env_cfg = Counting(), StepEnvConfig()
    results = evaluate(policy, env_cfg, ["t"], 1, parallel_envs=1, show_progress=False, ensemble=ensemble,
                       ensemble_temp=math.log(2))
    assert [r.steps for r in results] == [4] and policy.calls == calls
    np.testing.assert_allclose(env_cfg.log, expect, rtol=1e-12)
    assert env_cfg.renders == renders
