"""Batch image augmentation in numpy/cv2 for the grain input pipeline (no JAX: it runs in grain workers).

All randomness comes from the `np.random.Generator` passed in, which grain seeds from (seed, batch index).
Geometry is folded into one inverse affine matrix per image and applied with a single `cv2.warpAffine`
(exact for integer translations and flips). Per image: uint8 geometry -> float32 in [0, 1] -> random
erasing; normalisation is the caller's last step.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import cv2
import numpy as np

BORDERS = {"reflect": cv2.BORDER_REFLECT_101, "constant": cv2.BORDER_CONSTANT}
ERASING_FILLS = ("noise", "mean", "zero")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Augmentation parameters; each op is off at its zero/False/None value.

  Attributes:
    rotation_deg: rotation angle drawn uniformly from [-rotation_deg, rotation_deg].
    shift: translation drawn uniformly from [-shift, shift] times width/height.
    zoom: isotropic scale drawn uniformly from [1 - zoom, 1 + zoom] (>1 zooms in).
    hflip: mirror left-right with probability 1/2.
    crop_size: random square crop of this size (training only; the eval pipeline never crops).
    crop_padding: CIFAR-style pad-and-crop, a random integer translation in [-crop_padding, crop_padding].
    border: how rotation, zoom, shift and pad-and-crop fill pixels from outside the image: 'reflect'
      (np.pad 'reflect', cv2 REFLECT_101) or 'constant' (zeros).
    erasing_prob: probability of erasing one rectangle per image (Zhong et al.).
    erasing_area: (min, max) fraction of the image area erased.
    erasing_aspect: (min, max) aspect ratio h/w, drawn log-uniformly.
    erasing_fill: 'noise' (uniform [0, 1) per pixel and channel), 'mean' (the image's per-channel mean) or 'zero'.
  """

  rotation_deg: float = 0.0
  shift: float = 0.0
  zoom: float = 0.0
  hflip: bool = False
  crop_size: int | None = None
  crop_padding: int = 0
  border: str = "reflect"
  erasing_prob: float = 0.0
  erasing_area: tuple[float, float] = (0.02, 0.2)
  erasing_aspect: tuple[float, float] = (0.3, 3.3)
  erasing_fill: str = "noise"

  def __post_init__(self):
    if self.rotation_deg < 0 or self.shift < 0 or self.crop_padding < 0:
      raise ValueError(f"rotation_deg, shift and crop_padding must be >= 0: {self}")
    if not 0 <= self.zoom < 1:
      raise ValueError(f"zoom must be in [0, 1) (a scale range [1-zoom, 1+zoom]), got {self.zoom}.")
    if self.crop_size is not None and self.crop_size <= 0:
      raise ValueError(f"crop_size must be a positive int or None, got {self.crop_size}.")
    if self.border not in BORDERS:
      raise ValueError(f"border must be one of {sorted(BORDERS)}, got {self.border!r}.")
    if not 0 <= self.erasing_prob <= 1:
      raise ValueError(f"erasing_prob must be in [0, 1], got {self.erasing_prob}.")
    lo, hi = self.erasing_area
    if not 0 < lo <= hi <= 1:
      raise ValueError(f"erasing_area must satisfy 0 < min <= max <= 1, got {self.erasing_area}.")
    lo, hi = self.erasing_aspect
    if not 0 < lo <= hi:
      raise ValueError(f"erasing_aspect must satisfy 0 < min <= max, got {self.erasing_aspect}.")
    if self.erasing_fill not in ERASING_FILLS:
      raise ValueError(f"erasing_fill must be one of {ERASING_FILLS}, got {self.erasing_fill!r}.")

  @classmethod
  def from_config(cls, cfg: Any) -> AugmentConfig:
    """Reads `config.data.augment` (ConfigDict or dict); enabled=False turns every op off, None keeps a default."""
    if cfg is None or not cfg.get("enabled", True):
      return cls()
    values = {"crop_size": int(cfg["crop_size"]) if cfg.get("crop_size") else None}  # 0 also means no crop.
    for field in dataclasses.fields(cls):
      value, default = cfg.get(field.name), field.default
      if field.name != "crop_size" and value is not None:
        values[field.name] = tuple(float(v) for v in value) if isinstance(default, tuple) else type(default)(value)
    return cls(**values)

  @property
  def geometric(self) -> bool:
    """Whether any op needs the affine warp."""
    return bool(self.rotation_deg or self.shift or self.zoom or self.hflip or self.crop_size or self.crop_padding)

  def output_hw(self, height: int, width: int) -> tuple[int, int]:
    """Training image size after the random crop."""
    if self.crop_size is None:
      return height, width
    if self.crop_size > min(height, width):
      raise ValueError(f"crop_size {self.crop_size} is larger than the {height}x{width} images.")
    return self.crop_size, self.crop_size


def inverse_affine_matrices(rng: np.random.Generator, n: int, height: int, width: int,
                            cfg: AugmentConfig) -> np.ndarray:
  """Samples [n, 2, 3] matrices mapping output pixel (x, y, 1) to source pixel coordinates.

  Forward model about the centre c: dst = c + R(theta) * s * F (src - c) + t, then pad-and-crop and random
  crop (integer translations of dst). Disabled ops still draw, so enabling one keeps the others' draws.
  """
  theta = np.deg2rad(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg, n))
  scale = rng.uniform(1.0 - cfg.zoom, 1.0 + cfg.zoom, n)
  shift = rng.uniform(-cfg.shift, cfg.shift, (n, 2)) * np.array([width, height])
  flip = np.where((rng.random(n) < 0.5) & cfg.hflip, -1.0, 1.0)
  pad = cfg.crop_padding
  offset = rng.integers(-pad, pad + 1, (n, 2)).astype(np.float64)
  out_h, out_w = cfg.output_hw(height, width)
  offset[:, 0] += rng.integers(0, width - out_w + 1, n)
  offset[:, 1] += rng.integers(0, height - out_h + 1, n)
  if not cfg.rotation_deg:
    theta[:] = 0.0
  if not cfg.zoom:
    scale[:] = 1.0
  center = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
  # src = c + F * (1/s) * R(-theta) (q - c - t), with q = output pixel + offset.
  cos, sin = np.cos(theta) / scale, np.sin(theta) / scale
  lin = np.empty((n, 2, 2))
  lin[:, 0, 0] = flip * cos
  lin[:, 0, 1] = flip * sin
  lin[:, 1, 0] = -sin
  lin[:, 1, 1] = cos
  matrices = np.empty((n, 2, 3))
  matrices[:, :, :2] = lin
  matrices[:, :, 2] = np.einsum("nij,nj->ni", lin, offset - center - shift) + center
  return matrices


def geometric(images: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
  """Random flip/rotation/zoom/shift/pad-crop/crop of uint8 [N, H, W, C] images, one warp each."""
  if not cfg.geometric:
    return images
  images = np.ascontiguousarray(images)
  n, height, width, channels = images.shape
  out_h, out_w = cfg.output_hw(height, width)
  matrices = inverse_affine_matrices(rng, n, height, width, cfg)
  out = np.empty((n, out_h, out_w, channels), images.dtype)
  flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
  border = BORDERS[cfg.border]
  for i in range(n):
    # cv2 drops a trailing channel axis of 1, so gray images are written through a 2-D view.
    cv2.warpAffine(images[i], matrices[i], (out_w, out_h), dst=out[i] if channels > 1 else out[i, :, :, 0],
                   flags=flags, borderMode=border, borderValue=0)
  return out


def random_erasing(images: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
  """Erases one random rectangle per float32 [0, 1] image with probability cfg.erasing_prob, in place.

  Fills stay in [0, 1]; rectangles larger than the image are clipped to it (instead of retried).
  """
  n, height, width, channels = images.shape
  apply = rng.random(n) < cfg.erasing_prob
  area = rng.uniform(*cfg.erasing_area, n) * height * width
  aspect = np.exp(rng.uniform(math.log(cfg.erasing_aspect[0]), math.log(cfg.erasing_aspect[1]), n))
  h = np.clip(np.round(np.sqrt(area * aspect)), 1, height).astype(np.int64)
  w = np.clip(np.round(np.sqrt(area / aspect)), 1, width).astype(np.int64)
  y0 = (rng.random(n) * (height - h + 1)).astype(np.int64)
  x0 = (rng.random(n) * (width - w + 1)).astype(np.int64)
  if not cfg.erasing_prob or not apply.any():
    return images
  chosen = np.flatnonzero(apply)
  if cfg.erasing_fill == "noise":
    sizes = h[chosen] * w[chosen] * channels
    noise = rng.random(int(sizes.sum()), dtype=np.float32)
    starts = np.concatenate([[0], np.cumsum(sizes)])
  for j, i in enumerate(chosen):
    patch = images[i, y0[i]:y0[i] + h[i], x0[i]:x0[i] + w[i]]
    if cfg.erasing_fill == "noise":
      patch[...] = noise[starts[j]:starts[j + 1]].reshape(patch.shape)
    elif cfg.erasing_fill == "mean":
      patch[...] = images[i].mean(axis=(0, 1))
    else:
      patch[...] = 0.0
  return images


def to_float(images: np.ndarray) -> np.ndarray:
  """uint8 -> float32 in [0, 1] (exactly x / 255)."""
  return np.divide(images, np.float32(255.0), dtype=np.float32)


def augment_batch(images: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
  """Full training augmentation: uint8 [N, H, W, C] -> float32 [N, H', W', C] in [0, 1]."""
  if images.dtype != np.uint8 or images.ndim != 4:
    raise ValueError(f"augment_batch expects uint8 [N, H, W, C] images, got {images.dtype} {images.shape}.")
  out = to_float(geometric(images, rng, cfg))
  if cfg.erasing_prob:
    out = random_erasing(out, rng, cfg)
  return out
