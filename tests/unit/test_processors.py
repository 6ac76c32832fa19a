"""Normalization, image and prompt steps, feature checks, and pipeline save/load."""

from __future__ import annotations

import numpy as np
import pytest

from vlaforge.data.stats import StatsError, numeric_stats
from vlaforge.processors.base import Pipeline, collate
from vlaforge.processors.features import CheckFeatures
from vlaforge.processors.image import ImageStep, RandomShift, resize_with_pad
from vlaforge.processors.normalize import Normalize, Unnormalize
from vlaforge.types import ACTION, OBS_STATE, TASK, FeatureMismatchError, RobotSpec, image_key

RNG = np.random.default_rng(0)
X = RNG.normal(2.0, 3.0, size=(500, 4)).astype(np.float32)
STATS = {ACTION: numeric_stats(X)}


@pytest.mark.parametrize("mode", ["mean_std", "min_max", "q01_q99"])
def test_normalize_unnormalize_round_trip(mode):
    norm = Normalize.from_stats({ACTION: mode}, STATS, clip=False)
    unnorm = Unnormalize.from_stats({ACTION: mode}, STATS)
    y = norm({ACTION: X.copy()})[ACTION]
    if mode == "mean_std":
        np.testing.assert_allclose(y.mean(0), 0, atol=1e-4)
        np.testing.assert_allclose(y.std(0), 1, atol=1e-3)
    else:
        lo = {"min_max": y.min(0), "q01_q99": np.quantile(y, 0.01, axis=0)}[mode]
        np.testing.assert_allclose(lo, -1, atol=1e-4)
    np.testing.assert_allclose(unnorm({ACTION: y})[ACTION], X, rtol=1e-5, atol=1e-4)


def test_bounds_modes_clip_and_mask_leaves_dims_untouched():
    norm = Normalize.from_stats({ACTION: "q01_q99"}, STATS, masks={ACTION: [True, True, True, False]})
    y = norm({ACTION: X.copy()})[ACTION]
    assert y[:, :3].min() >= -1 and y[:, :3].max() <= 1
    np.testing.assert_array_equal(y[:, 3], X[:, 3])  # the masked (gripper-like) dim is passed through


def test_tiny_range_warns_and_stays_finite():
    x = X.copy()
    x[:, 2] = 0.5  # a constant dimension
    with pytest.warns(UserWarning, match=r"dims \[2\]"):
        norm = Normalize.from_stats({ACTION: "min_max"}, {ACTION: numeric_stats(x)})
    y = norm({ACTION: x})[ACTION]
    assert np.isfinite(y).all() and np.allclose(y[:, 2], 0)


def test_constant_dims_stay_finite_after_save_and_load(tmp_path):
    from vlaforge.processors.base import Pipeline

    x = X.copy()
    x[:, 1] = 0.0  # e.g. the bridge transform's always-zero state pad
    for mode in ("mean_std", "min_max", "q01_q99"):
        with pytest.warns(UserWarning):
            pipe = Pipeline([Normalize.from_stats({ACTION: mode}, {ACTION: numeric_stats(x)})])
        pipe.save(tmp_path, mode)
        loaded = Pipeline.load(tmp_path, mode)
        y = loaded({ACTION: x.copy()})[ACTION]
        assert np.isfinite(y).all()
        np.testing.assert_array_equal(y, pipe({ACTION: x.copy()})[ACTION])


def test_non_finite_or_missing_stats_are_errors():
    bad = {ACTION: {k: v.copy() for k, v in STATS[ACTION].items()}}
    bad[ACTION]["std"][1] = np.nan
    with pytest.raises(StatsError, match="action/std.*dims \\[1\\]"):
        Normalize.from_stats({ACTION: "mean_std"}, bad)
    with pytest.raises(StatsError, match="no statistics for 'observation.state'"):
        Normalize.from_stats({OBS_STATE: "mean_std"}, STATS)


def test_resize_with_pad_keeps_aspect_and_range():
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :, 0] = 255
    out = resize_with_pad(img, 32)
    assert out.shape == (3, 32, 32) and out.dtype == np.float32
    assert out[0, 16, 16] == pytest.approx(1.0) and out[0, 0, 16] == 0.0  # padded rows top/bottom are black
    assert resize_with_pad(np.zeros((2, 32, 32, 3), np.uint8), 32).shape == (2, 3, 32, 32)


def test_random_shift_is_seeded_and_shape_preserving():
    img = RNG.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    step = RandomShift(cameras=["c"], pad=4)
    a = step({image_key("c"): img, "_aug_seed": 1})[image_key("c")]
    b = step({image_key("c"): img, "_aug_seed": 1})[image_key("c")]
    assert a.shape == img.shape and np.array_equal(a, b)


def _robot() -> RobotSpec:
    return RobotSpec(cameras={"front": (32, 32), "wrist": (32, 32)}, state_dim=4, action_dim=4)


def _obs(**over):
    obs = {image_key("front"): np.zeros((32, 32, 3), np.uint8), image_key("wrist"): np.zeros((32, 32, 3), np.uint8),
           OBS_STATE: np.zeros(4, np.float32), TASK: "open the drawer"}
    obs.update(over)
    return {k: v for k, v in obs.items() if v is not None}


def test_check_features_lists_every_difference():
    step = CheckFeatures(robot=_robot().to_json())
    step(_obs())
    bad = _obs(**{image_key("wrist"): None, image_key("gripper"): np.zeros((32, 32, 3), np.uint8),
                  image_key("front"): np.zeros((24, 32, 3), np.float32), OBS_STATE: np.zeros(3)})
    with pytest.raises(FeatureMismatchError) as e:
        step(bad)
    msg = str(e.value)
    for part in ["camera 'wrist': expected, missing", "camera 'gripper': not one of",
                 "camera 'front': expected shape (32, 32, 3), got (24, 32, 3)", "expected dtype uint8, got float32",
                 "'observation.state': expected shape (4,), got (3,)"]:
        assert part in msg
    with pytest.raises(FeatureMismatchError, match="NaN or inf"):
        step(_obs(**{OBS_STATE: np.array([0, np.nan, 0, 0], np.float32)}))


def test_pipeline_save_load_gives_identical_outputs(tmp_path):
    from vlaforge.backbones.tokenizer import build_tokenizer
    from vlaforge.processors.text import Tokenize

    tok = build_tokenizer()
    stats = {OBS_STATE: numeric_stats(X), ACTION: numeric_stats(X)}
    pipe = Pipeline([CheckFeatures(robot=_robot().to_json()),
                     Normalize.from_stats({OBS_STATE: "mean_std", ACTION: "q01_q99"}, stats),
                     ImageStep(cameras=["front", "wrist"], size=32), Tokenize(template="In: {task}?")])
    pipe.steps[-1].bind(tokenizer=tok)
    pipe.save(tmp_path, "inputs")
    again = Pipeline.load(tmp_path, "inputs", tokenizer=tok)
    obs = _obs(**{OBS_STATE: X[0], ACTION: X[:3]})
    a, b = pipe(dict(obs)), again(dict(obs))
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            np.testing.assert_array_equal(a[k], b[k])
    assert tok.decode(a["input_ids"]) == "In: open the drawer?"
    batch = collate([a, pipe(_obs(**{TASK: "Press the BUTTON from the top.", OBS_STATE: X[1], ACTION: X[3:6]}))])
    assert batch["input_ids"].shape[0] == 2 and batch["attention_mask"].sum(1).tolist()[0] < batch["input_ids"].shape[1]
    with pytest.raises(KeyError, match="missing.*action"):
        collate([a, pipe(_obs())])
    with pytest.raises(ValueError, match="needs resources"):
        Pipeline.load(tmp_path, "inputs")
