"""Image steps: resize to the backbone's resolution (letterbox or squash, bilinear or PIL bicubic, optional centre
crop), and train-time augmentation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

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


RESIZE_MODES = ("pad", "squash", "pad_topleft")


def resize_with_pad_topleft(img: np.ndarray, size: int) -> np.ndarray:
    """LeRobot's SmolVLA convention: uint8 (..., H, W, 3) -> float32 (..., 3, size, size) in [0, 1], the long side
    resized to ``size`` (sides truncated to int, bilinear without antialiasing) and black padding on the LEFT and
    TOP only."""
    x = torch.from_numpy(np.ascontiguousarray(img)).float().div_(255.0)
    lead = x.shape[:-3]
    x = x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2)
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        ratio = max(w / size, h / size)
        nh, nw = max(1, int(h / ratio)), max(1, int(w / ratio))
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
        x = F.pad(x, (size - nw, 0, size - nh, 0))
    return x.reshape(*lead, 3, size, size).numpy()
INTERPOLATIONS = ("bilinear", "bicubic")


def _pil_resize(frames: np.ndarray, h: int, w: int) -> np.ndarray:
    """uint8 (N, H, W, 3) -> uint8 (N, h, w, 3) with PIL's bicubic filter (what HF's and Prismatic's PIL image
    processors do: resize the uint8 image, then scale to [0, 1])."""
    return np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BICUBIC)) for f in frames])


def center_crop_resize(x: np.ndarray, area: float) -> np.ndarray:
    """float (N, H, W, 3) in [0, 1] -> the centre window covering ``area`` of the image (side sqrt(area)) resized
    back to (H, W), sampled bilinearly as TensorFlow's ``crop_and_resize`` (OpenVLA-OFT's LIBERO crop) and
    re-quantized to 8 bits as TF's ``convert_image_dtype`` does (x 255.5, truncated)."""
    h, w = x.shape[1:3]
    side = float(np.sqrt(area))
    lo, hi = (1 - side) / 2, (1 + side) / 2

    def coords(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = lo * (size - 1) + np.arange(size) * (hi - lo) * (size - 1) / max(size - 1, 1)
        i0 = np.floor(src).astype(int)
        return i0, np.minimum(i0 + 1, size - 1), (src - i0).astype(np.float32)

    y0, y1, fy = coords(h)
    x0, x1, fx = coords(w)
    top = x[:, y0][:, :, x0] * (1 - fx)[None, None, :, None] + x[:, y0][:, :, x1] * fx[None, None, :, None]
    bot = x[:, y1][:, :, x0] * (1 - fx)[None, None, :, None] + x[:, y1][:, :, x1] * fx[None, None, :, None]
    out = np.clip(top * (1 - fy)[None, :, None, None] + bot * fy[None, :, None, None], 0, 1)
    return np.floor(out * 255.5).clip(0, 255).astype(np.uint8).astype(np.float32) / 255.0


def resize_image(img: np.ndarray, size: int, mode: str = "pad", interpolation: str = "bilinear",
                 crop: float = 1.0) -> np.ndarray:
    """uint8 (..., H, W, 3) -> float32 (..., 3, size, size) in [0, 1].

    ``mode``: "pad" keeps the aspect ratio and pads with black (letterbox); "squash" resizes to size x size;
    "pad_topleft": LeRobot SmolVLA's resize-with-pad (:func:`resize_with_pad_topleft`, bilinear only).
    ``interpolation``: "bilinear" (torch, antialiased) or "bicubic" (PIL, as OpenVLA's and LLaVA's processors).
    ``crop`` < 1: then the centre crop covering that fraction of the area, resized back (OpenVLA-OFT).
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"image resize mode: expected one of {RESIZE_MODES}, got {mode!r}")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"image interpolation: expected one of {INTERPOLATIONS}, got {interpolation!r}")
    if interpolation == "bilinear" and mode == "pad" and crop >= 1:
        return resize_with_pad(img, size)
    if mode == "pad_topleft":
        if interpolation != "bilinear" or crop < 1:
            raise ValueError(f"image resize mode pad_topleft: bilinear without crop only, got {interpolation!r}, "
                             f"crop {crop}")
        return resize_with_pad_topleft(img, size)
    lead = img.shape[:-3]
    frames = np.ascontiguousarray(img).reshape(-1, *img.shape[-3:])
    h, w = frames.shape[1:3]
    scale = size / max(h, w)
    nh, nw = (size, size) if mode == "squash" else (max(1, round(h * scale)), max(1, round(w * scale)))
    if (nh, nw) == (h, w):
        x = frames.astype(np.float32) / 255.0
    elif interpolation == "bicubic":
        x = _pil_resize(frames, nh, nw).astype(np.float32) / 255.0
    else:
        t = torch.from_numpy(frames).float().div_(255.0).permute(0, 3, 1, 2)
        x = F.interpolate(t, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)
        x = x.permute(0, 2, 3, 1).numpy()
    if (nh, nw) != (size, size):
        top, left = (size - nh) // 2, (size - nw) // 2
        x = np.pad(x, ((0, 0), (top, size - nh - top), (left, size - nw - left), (0, 0)))
    if crop < 1:
        x = center_crop_resize(x, crop)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(*lead, 3, size, size).astype(np.float32)


def stitch(images: list[np.ndarray], size: int = 0) -> np.ndarray:
    """LLaVA-VLA's multi-view layout: 2 views stacked vertically, 3-4 views in a 2x2 grid (black fill).

    Views are first padded to a common (H, W); works on (..., H, W, 3) with any leading (history) axes.
    ``size`` > 0 is LLaVA-VLA's own composition (``calvin2json.py`` / ``flask_server.py``, ``TARGET_IMG_SIZE``
    334): each of the (at most 2) views is resized with PIL's Lanczos filter to ``size`` wide x ``size // 2`` tall
    and pasted top to bottom on a ``size`` x ``size`` black canvas.
    """
    if not 1 <= len(images) <= 4:
        raise ValueError(f"stitch: 1 to 4 camera views are supported, got {len(images)}")
    if size:
        if len(images) > 2:
            raise ValueError(f"stitch with stitch_view_size={size}: LLaVA-VLA stacks 2 views, got {len(images)}")
        out = np.zeros((*images[0].shape[:-3], size, size, 3), dtype=np.uint8)
        rows = size // 2
        for i, img in enumerate(images):
            frames = np.ascontiguousarray(img, dtype=np.uint8).reshape(-1, *img.shape[-3:])
            small = np.stack([np.asarray(Image.fromarray(f).resize((size, rows), Image.LANCZOS)) for f in frames])
            out[..., i * rows:(i + 1) * rows, :, :] = small.reshape(*img.shape[:-3], rows, size, 3)
        return out
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
    """Convert every camera to float (3, size, size) in [0, 1]; with ``stitch`` into one image first.

    ``resize`` / ``interpolation`` / ``crop``: see :func:`resize_image` (the backbone's or importer's convention);
    ``stitch_size``: see :func:`stitch`.
    """

    cameras: list[str]
    size: int
    stitch: bool = False
    resize: str = "pad"
    interpolation: str = "bilinear"
    crop: float = 1.0
    stitch_size: int = 0

    def _resize(self, img: np.ndarray) -> np.ndarray:
        return resize_image(img, self.size, self.resize, self.interpolation, self.crop)

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
            item[image_key(STITCHED_CAMERA)] = self._resize(stitch(list(raw.values()), self.stitch_size))
        else:
            item.update({key: self._resize(img) for key, img in raw.items()})
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


class _FrameAugment(Step):
    """Base of the train-only image augmentations: one seeded draw per camera, shared by its history frames.

    Subclasses set ``salt`` (so that two augmentations of one item draw independently) and implement
    :meth:`augment` on frames ``(N, H, W, 3)``; a history window ``(T, H, W, 3)`` is augmented as one draw.
    """

    salt: ClassVar[int]
    cameras: list[str]

    def augment(self, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        rng = np.random.default_rng([int(item.get(AUG_SEED, 0)), self.salt])
        for cam in self.cameras:
            key = image_key(cam)
            img = np.asarray(item[key])
            frames = img.reshape(-1, *img.shape[-3:])
            item[key] = self.augment(frames, rng).reshape(img.shape)
        return item


@STEPS.register("random_resized_crop")
@dataclass
class RandomResizedCrop(_FrameAugment):
    """Crop a random window covering ``scale`` of the area (aspect kept) and resize it back. Training only."""

    salt: ClassVar[int] = 1
    cameras: list[str]
    scale: tuple[float, float] = (0.9, 1.0)

    def augment(self, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = frames.shape[1:3]
        side = np.sqrt(rng.uniform(*self.scale))
        ch, cw = max(1, round(h * side)), max(1, round(w * side))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        return np.stack([np.asarray(Image.fromarray(f[y : y + ch, x : x + cw]).resize((w, h), Image.BILINEAR))
                         for f in frames])


@STEPS.register("random_rotation")
@dataclass
class RandomRotation(_FrameAugment):
    """Rotate by a random angle in ``[-degrees, degrees]`` about the centre (edges filled black). Training only."""

    salt: ClassVar[int] = 2
    cameras: list[str]
    degrees: float = 5.0

    def augment(self, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        angle = float(rng.uniform(-self.degrees, self.degrees))
        return np.stack([np.asarray(Image.fromarray(f).rotate(angle, resample=Image.BILINEAR)) for f in frames])


_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@STEPS.register("color_jitter")
@dataclass
class ColorJitter(_FrameAugment):
    """Random brightness, contrast and saturation factors in ``[1 - x, 1 + x]`` and a hue shift in
    ``[-hue, hue]`` (fraction of a turn), applied in that order as torchvision's ColorJitter does. Training only."""

    salt: ClassVar[int] = 3
    cameras: list[str]
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.05

    def augment(self, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        b, c, s = (rng.uniform(1 - v, 1 + v) for v in (self.brightness, self.contrast, self.saturation))
        h = rng.uniform(-self.hue, self.hue)
        x = frames.astype(np.float32) * b
        mean_gray = (x @ _LUMA).mean(axis=(1, 2), keepdims=True)[..., None]
        x = (x - mean_gray) * c + mean_gray
        gray = (x @ _LUMA)[..., None]
        x = np.clip((x - gray) * s + gray, 0, 255).astype(np.uint8)
        if h:
            shift = round(h * 255)
            hsv = [np.asarray(Image.fromarray(f).convert("HSV")) for f in x]
            x = np.stack([np.asarray(Image.fromarray(
                np.concatenate([((f[..., :1].astype(np.int16) + shift) % 256).astype(np.uint8), f[..., 1:]], -1),
                mode="HSV").convert("RGB")) for f in hsv])
        return x
