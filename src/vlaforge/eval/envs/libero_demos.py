"""LIBERO's own demonstration files (robomimic HDF5, as LIBERO's ``scripts/create_dataset.py`` writes them).

One file per task, ``<task>_demo.hdf5``::

    data.attrs        env_name, problem_info (JSON: problem_name, domain_name, language_instruction),
                      bddl_file_name, bddl_file_content, env_args (JSON), macros_image_convention, num_demos, total
    data/demo_i/      actions (T, 7), states (T, D) flattened MuJoCo states, robot_states (T, 9), rewards, dones
                      (T,) uint8 with 1 at the last step; attrs num_samples, init_state
    data/demo_i/obs/  agentview_rgb, eye_in_hand_rgb (T, H, W, 3) uint8 as rendered (upside down, the OpenGL
                      convention: NOT rotated), ee_pos (T, 3), ee_ori (T, 3) axis-angle, ee_states (T, 6),
                      gripper_states (T, 2), joint_states (T, 7)

``problem_info.language_instruction`` is the instruction the LeRobot collection is labelled with (LIBERO's task
language, derived from the task name as the benchmark does); the bddl's own phrasing stays in ``bddl_file_content``.
The per-demo ``model_file`` XML of human-teleoperated LIBERO files is not written (the bddl file rebuilds the scene).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from vlaforge.eval.envs.libero import rotate180, suite_of
from vlaforge.types import ACTION, image_key

# robosuite camera -> LIBERO's dataset key
LIBERO_IMAGE_KEYS = {"agentview": "agentview_rgb", "robot0_eye_in_hand": "eye_in_hand_rgb"}


def write_libero_hdf5(path: Path, cfg: Any, task: str, instruction: str, episodes: list[dict[str, np.ndarray]],
                      records: list[dict[str, np.ndarray]]) -> Path:
    """Write one task's episodes (vlaforge frames + the env's :meth:`LiberoEnv.record` arrays) to ``path``."""
    import h5py
    from libero.libero.envs.bddl_utils import get_problem_info

    from vlaforge.eval.envs.libero import _task_files

    _, bddl, _ = _task_files(task)
    info = get_problem_info(str(bddl))
    problem_info = {"problem_name": info["problem_name"], "domain_name": info["domain_name"],
                    "language_instruction": instruction}
    path.parent.mkdir(parents=True, exist_ok=True)
    total = 0
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_name"] = info["problem_name"]
        data.attrs["problem_info"] = json.dumps(problem_info)
        data.attrs["bddl_file_name"] = f"{suite_of(task)}/{bddl.name}"
        data.attrs["bddl_file_content"] = bddl.read_text()
        data.attrs["env_args"] = json.dumps({"type": 1, "env_name": info["problem_name"],
                                             "problem_name": info["problem_name"], "bddl_file": bddl.name,
                                             "env_kwargs": {"control_freq": 20, "controller": "OSC_POSE",
                                                            "camera_heights": cfg.image_size,
                                                            "camera_widths": cfg.image_size,
                                                            "camera_names": list(cfg.cameras.values())}})
        data.attrs["macros_image_convention"] = "opengl"
        for i, (ep, rec) in enumerate(zip(episodes, records, strict=True)):
            n = len(ep[ACTION])
            demo = data.create_group(f"demo_{i}")
            obs = demo.create_group("obs")
            for role, cam in cfg.cameras.items():
                frames = ep[image_key(role)]
                obs.create_dataset(LIBERO_IMAGE_KEYS.get(cam, f"{cam}_rgb"),
                                   data=np.stack([rotate180(im) for im in frames]))  # back to as-rendered
            for key in ("ee_pos", "ee_ori", "gripper_states", "joint_states"):
                obs.create_dataset(key, data=rec[key])
            obs.create_dataset("ee_states", data=np.concatenate([rec["ee_pos"], rec["ee_ori"]], axis=1))
            demo.create_dataset("actions", data=ep[ACTION].astype(np.float64))
            demo.create_dataset("states", data=rec["states"])
            demo.create_dataset("robot_states", data=rec["robot_states"])
            flags = np.zeros(n, dtype=np.uint8)
            flags[-1] = 1
            demo.create_dataset("rewards", data=flags)
            demo.create_dataset("dones", data=flags.copy())
            demo.attrs["num_samples"] = n
            demo.attrs["init_state"] = rec["states"][0]
            total += n
        data.attrs["num_demos"] = len(episodes)
        data.attrs["total"] = total
    return path
