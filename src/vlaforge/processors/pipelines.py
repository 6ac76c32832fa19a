"""Assembling a policy's inputs and outputs pipelines from the steps its parts contribute (DESIGN §1).

The data side contributes feature checking and normalization (one robot's features, one dataset's statistics);
the backbone contributes its image and prompt steps (``Backbone.input_steps``: resize mode, interpolation, prompt
template, suffix token …), set by its config or by an importer of a released checkpoint. Steps that depend on a
dataset say so through ``uses_stats`` / ``uses_robot`` and are re-made for another dataset with ``rebind``, so
nothing here or in the policy needs to know which step is which.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vlaforge.data.stats import Stats
from vlaforge.processors.base import Pipeline, Step
from vlaforge.processors.features import CheckFeatures
from vlaforge.processors.normalize import Normalize, PerDataset, Unnormalize
from vlaforge.types import ACTION, RobotSpec


def build_pipelines(robot: RobotSpec, history: int, modes: dict[str, str], stats: Stats,
                    masks: dict[str, list[bool]], model_steps: Sequence[Step]) -> tuple[Pipeline, Pipeline]:
    """(inputs, outputs): check features -> normalize -> the model's steps; and un-normalize the action."""
    inputs = Pipeline([CheckFeatures(robot=robot.to_json(), history=history), Normalize.from_stats(modes, stats, masks),
                       *model_steps])
    outputs = Pipeline([Unnormalize.from_stats({ACTION: modes[ACTION]}, stats,
                                               {k: v for k, v in masks.items() if k == ACTION})])
    return inputs, outputs


def rebind(pipeline: Pipeline, stats: Stats | None = None, robot: RobotSpec | None = None) -> Pipeline:
    """The same pipeline for another dataset's statistics and/or robot (mixture checkpoints' ``unnorm_key``)."""
    return Pipeline([s.rebind(stats=stats, robot=robot) for s in pipeline.steps])


def per_dataset(step: Step, stats: dict[str, Stats], robots: dict[str, RobotSpec]) -> Step:
    """What mixture training runs instead of a saved step: each item's own dataset's version of it."""
    if len(stats) <= 1 or not (step.uses_stats or (step.uses_robot and robots)):
        return step
    names = stats if step.uses_stats else robots
    return PerDataset({name: step.rebind(stats=stats.get(name), robot=robots.get(name)) for name in names})


def dataset_steps(pipeline: Pipeline, stats: dict[str, Stats], robots: dict[str, RobotSpec]) -> Pipeline:
    """The statistics steps of a pipeline, per dataset (what normalizes training actions for fitting)."""
    return Pipeline([per_dataset(s, stats, robots) for s in pipeline.steps if s.uses_stats])


def train_steps(pipeline: Pipeline, stats: dict[str, Stats], robots: dict[str, RobotSpec],
                augment: Sequence[Step] = ()) -> Pipeline:
    """The inputs pipeline with train-only steps in front and per-dataset steps for mixtures."""
    return Pipeline(list(augment) + [per_dataset(s, stats, robots) for s in pipeline.steps])


__all__: list[Any] = ["build_pipelines", "dataset_steps", "per_dataset", "rebind", "train_steps"]
