"""Image steps: resize-with-pad to the backbone's resolution, and train-time augmentation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vlaforge.processors.base import AUG_SEED, STEPS, Step
from vlaforge.types import STITCHED_CAMERA, image_key


def resize_with_pad(img: np.ndarray, size: int) -> np.ndarray:
    """uint8 (..., H, W, 3) -> float32 (..., 3, size, size) in [0, 1]; keeps aspect ratio, pads with black."""
    x = torch.from_numpy(np.ascontiguousarray(img)).float().div_(255.0)
    lead = x.shape[:-3]
    x = x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2)  # (N, 3, H, W)
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        scale = size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)
        top, left = (size - nh) // 2, (size - nw) // 2
        x = F.pad(x, (left, size - nw - left, top, size - nh - top))
    return x.reshape(*lead, 3, size, size).numpy()


def stitch(images: list[np.ndarray]) -> np.ndarray:
    """LLaVA-VLA's multi-view layout: 2 views stacked vertically, 3-4 views in a 2x2 grid (black fill).

    Views are first padded to a common (H, W); works on (..., H, W, 3) with any leading (history) axes.
    """
    if not 1 <= len(images) <= 4:
        raise ValueError(f"stitch: 1 to 4 camera views are supported, got {len(images)}")
    h = max(i.shape[-3] for i in images)
    w = max(i.shape[-2] for i in images)
    lead = images[0].shape[:-3]
    padded = []
    for img in images:
        canvas = np.zeros((*lead, h, w, 3), dtype=img.dtype)
        canvas[..., : img.shape[-3], : img.shape[-2], :] = img
        padded.append(canvas)
    if len(padded) <= 2:
        return np.concatenate(padded, axis=-3)
    while len(padded) < 4:
        padded.append(np.zeros_like(padded[0]))
    top, bottom = np.concatenate(padded[:2], axis=-2), np.concatenate(padded[2:], axis=-2)
    return np.concatenate([top, bottom], axis=-3)


@STEPS.register("images")
@dataclass
class ImageStep(Step):
    """Convert every camera to float (3, size, size) in [0, 1]; with ``stitch`` into one image first."""

    cameras: list[str]
    size: int
    stitch: bool = False

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        raw = {}
        for cam in self.cameras:
            key = image_key(cam)
            img = np.asarray(item[key])
            if img.dtype != np.uint8:
                raise TypeError(f"'{key}': expected uint8 pixels (H, W, 3), got {img.dtype}")
            raw[key] = img
        if self.stitch:
            for key in raw:
                del item[key]
            item[image_key(STITCHED_CAMERA)] = resize_with_pad(stitch(list(raw.values())), self.size)
        else:
            item.update({key: resize_with_pad(img, self.size) for key, img in raw.items()})
        return item


@STEPS.register("random_shift")
@dataclass
class RandomShift(Step):
    """DrQ-style augmentation: pad by ``pad`` pixels (edge replicate) and crop back at a random offset.

    Training only: the trainer puts it in front of the saved inputs pipeline, so it never runs at inference.
    """

    cameras: list[str]
    pad: int = 4

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        rng = np.random.default_rng(item.get(AUG_SEED))
        for cam in self.cameras:
            key = image_key(cam)
            img = np.asarray(item[key])
            h, w = img.shape[-3:-1]
            p = self.pad
            widths = [(0, 0)] * (img.ndim - 3) + [(p, p), (p, p), (0, 0)]
            padded = np.pad(img, widths, mode="edge")
            dy, dx = rng.integers(0, 2 * p + 1, size=2)
            item[key] = padded[..., dy : dy + h, dx : dx + w, :]
        return item
