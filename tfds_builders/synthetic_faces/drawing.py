"""SYNTHETIC cartoon faces with the 7 FER2013 expressions, drawn from a seed.

This is not real data. It exists so that the trainer, the input pipeline and
the tests run on a fresh machine with no download: a procedurally drawn,
48x48 grayscale stand-in for FER2013 whose labels follow the drawn facial
features (mouth curve and opening, brows, eyes, nose wrinkles), with enough
nuisance variation (pose, face shape, hair, lighting, noise, blur, expression
strength) that a small CNN learns it well above chance without saturating.

Every image is a pure function of (label, seed, stream, index, difficulty):
each example reads its own `np.random.default_rng([seed, stream, index])`;
shapes are filled by OpenCV at integer fixed-point coordinates (1/64 pixel) on
a 4x supersampled canvas, then area-averaged down. Per-face values only meet
elementwise IEEE arithmetic (+, -, *, /, sqrt; no sin/exp of random values,
whose last bit varies between math libraries, and no reductions or matrix
products, whose rounding varies with batch size and BLAS build), so a seed
gives the same bytes on every machine with the same numpy and OpenCV, whether
faces are drawn one at a time or in batches. Shapes are laid out vectorised
over a batch and drawn per face: about 7,000 faces/s in one process.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from fer_jax.data.faces import EMOTIONS
from tfds_builders.synthetic_faces import expressions

NUM_CLASSES = len(EMOTIONS)
SIZE = 48
# Bump when the pixels a seed gives change: datasets record it in their build report.
GENERATOR_VERSION = "1.0.0"

_SS = 4  # supersampling factor; area-averaging back down antialiases the shapes.
_SHIFT = 4  # fixed-point fractional bits for cv2 coordinates.
_CANVAS = SIZE * _SS
_FIX = _SS * (1 << _SHIFT)  # 48-pixel units -> fixed-point canvas units.
_LABEL_STREAM_TAG = 0x4C41424C  # "LABL": keeps the label shuffle apart from per-example streams.

_P = len(expressions.NEUTRAL)
_BASE = np.array(list(expressions.NEUTRAL.values()))
_DELTA = np.array([[expressions.DELTAS[e].get(k, 0.0) for k in expressions.NEUTRAL] for e in EMOTIONS])
_JIT = np.array([expressions.JITTER[k] for k in expressions.NEUTRAL])
_NU = 48  # uniforms per face for pose, tones and style (45 used), then 4 per jitter
_NR = _NU + 4 * _P
_SQRT3 = math.sqrt(3.0)
_BATCH = 256  # faces laid out and finished together (vectorised); drawing is per face


def _circle(n: int) -> np.ndarray:
  # Rounded to 2**-30 so a last-bit difference in cos/sin between libms can't change pixels.
  angles = [2.0 * math.pi * i / n for i in range(n)]
  pts = np.array([[math.cos(a), math.sin(a)] for a in angles])
  return np.round(pts * 2.0**30) / 2.0**30


def _noise_field(size: int) -> np.ndarray:
  # Irwin-Hall sums of 4 uniforms: near-Gaussian, unit variance, and exact arithmetic.
  u = np.random.default_rng(0x4E4F4953).random((4, size, size))
  return ((u[0] + u[1] + u[2] + u[3] - 2.0) * _SQRT3).astype(np.float32)


def _segment_table(lengths: tuple[tuple[str, int], ...]) -> dict[str, slice]:
  table, start = {}, 0
  for name, n in lengths:
    table[name] = slice(start, start + n)
    start += n
  return table


# Fixed shapes, built once. Circles start at angle 0; their second half is the upper half.
_CIRCLE, _CIRCLE16 = _circle(32), _circle(16)
_CHIN = np.clip(_CIRCLE[:, 1], 0.0, 1.0) ** 2
_S7 = np.linspace(0.0, 1.0, 7)
_ARCH7 = 4.0 * _S7 * (1.0 - _S7)
_U = np.concatenate([_circle(24)[12:0:-1, 0], [1.0]])  # -1..1, dense near the mouth corners
_SQRT_RAMP = np.sqrt(np.maximum(0.0, 1.0 - _U**2))
_RAISE = np.clip(_U + 0.3, 0.0, 1.0) * _SQRT_RAMP  # upper-lip lift profile, right side up
_RAMP_X = (np.arange(SIZE) / (SIZE / 2) - 1.0)[None, None, :]  # -1..1 left to right
_RAMP_Y = _RAMP_X.reshape(1, SIZE, 1)
# Sensor noise: random 48x48 crops of one fixed field (fresh normals per image
# would be the slowest step).
_NOISE_BANK = 512
_NOISE_CROPS = np.lib.stride_tricks.sliding_window_view(_noise_field(_NOISE_BANK), (SIZE, SIZE))

# Every face's points live in one table: named segments of fixed length.
# Segments from "brow_l" on are facial features, shifted sideways by the yaw.
_SEGMENT_LENGTHS = (
    ("blob", 32), ("shoulders", 32), ("hair", 32), ("neck", 4), ("ear_l", 16), ("ear_r", 16),
    ("face", 32), ("fringe", 32),
    ("brow_l", 7), ("brow_r", 7), ("eye_l", 16), ("eye_r", 16), ("pupil_l", 16), ("pupil_r", 16),
    ("bridge", 2), ("nostril_l", 16), ("nostril_r", 16), ("wrinkle_0", 3), ("wrinkle_1", 3),
    ("wrinkle_2", 3), ("frown_l", 2), ("frown_r", 2), ("fold_l", 3), ("fold_r", 3), ("mouth", 26),
    ("teeth", 13), ("lips", 13))
_SEG = _segment_table(_SEGMENT_LENGTHS)
_SEG["lid_l"] = slice(_SEG["eye_l"].start + 8, _SEG["eye_l"].stop)  # upper half of the eye
_SEG["lid_r"] = slice(_SEG["eye_r"].start + 8, _SEG["eye_r"].stop)
_NUM_POINTS = _SEG["lips"].stop
_FIRST_FEATURE = _SEG["brow_l"].start

# Drawing order: (shape, segments, closed). A shape is filled unless it has a
# line width; its tone, width and whether this face has it come from _layout.
_DRAW_ORDER = (
    ("blob", ("blob",), False),
    ("shoulders", ("shoulders",), False),
    ("hair", ("hair",), False),
    ("neck", ("neck", "ear_l", "ear_r"), False),
    ("face", ("face",), False),
    ("fringe", ("fringe",), False),
    ("brows", ("brow_l", "brow_r"), False),
    ("sclera", ("eye_l", "eye_r"), False),
    ("pupils", ("pupil_l", "pupil_r"), False),
    ("lids", ("lid_l", "lid_r"), False),
    ("slits", ("eye_l", "eye_r"), True),
    ("bridge", ("bridge",), False),
    ("nostrils", ("nostril_l", "nostril_r"), False),
    ("wrinkles", ("wrinkle_0", "wrinkle_1", "wrinkle_2"), False),
    ("frown", ("frown_l", "frown_r"), False),
    ("folds", ("fold_l", "fold_r"), False),
    ("mouth_inside", ("mouth",), False),
    ("teeth", ("teeth",), False),
    ("mouth_outline", ("mouth",), True),
    ("lips", ("lips",), False),
)
_DRAW_SLICES = [[_SEG[s] for s in segments] for _, segments, _ in _DRAW_ORDER]


def balanced_labels(n: int, seed: int, stream: int = 0) -> np.ndarray:
  """Labels 0..6, counts within one of n/7, in a seeded order (so ids don't give labels away)."""
  rng = np.random.default_rng([seed, stream, _LABEL_STREAM_TAG])
  return rng.permutation(np.arange(n) % NUM_CLASSES).astype(np.int64)


def draw_faces(labels: np.ndarray, seed: int, *, stream: int = 0, start: int = 0,
               difficulty: float = 1.0) -> np.ndarray:
  """Draws one SYNTHETIC face per label; example i reads rng([seed, stream, start + i]).

  Returns uint8 [N, 48, 48]. Any slice of indices (`start`) gives the same
  pixels as drawing them all at once, so builders can generate in chunks.
  """
  labels = np.asarray(labels, dtype=np.int64).reshape(-1)
  out = np.empty((labels.size, SIZE, SIZE), np.uint8)
  for lo in range(0, labels.size, _BATCH):
    hi = min(labels.size, lo + _BATCH)
    r = np.empty((hi - lo, _NR))
    for i in range(lo, hi):
      np.random.default_rng([seed, stream, start + i]).random(out=r[i - lo])
    out[lo:hi] = _draw(labels[lo:hi], r, difficulty)
  return out


def draw_face(label: int, rng: np.random.Generator, *, difficulty: float = 1.0) -> np.ndarray:
  """Draws one SYNTHETIC 48x48 uint8 face showing EMOTIONS[label].

  `difficulty` scales the class-independent jitter, the spread of expression
  strength and the noise (1.0 is the calibrated default; 0 gives clean,
  full-strength expressions).
  """
  return _draw(np.array([label]), rng.random((1, _NR)), difficulty)[0]


def _draw(labels: np.ndarray, r: np.ndarray, difficulty: float) -> np.ndarray:
  """Faces for `labels` from uniforms r [N, _NR]; face i depends on labels[i] and r[i] only.

  Only elementwise numpy (never a reduction or matrix product, whose rounding
  could depend on the batch or the BLAS build) touches per-face values.
  """
  if labels.size and not (0 <= labels.min() and labels.max() < NUM_CLASSES):
    raise ValueError(f"labels must be in [0, {NUM_CLASSES}), got {labels}")
  n = labels.size
  points, shapes, camera = _layout(labels, r, difficulty)
  # Fixed-point canvas coordinates, and per face: background, then tone and
  # line thickness (0 = fill, -1 = skip) of each shape in _DRAW_ORDER.
  fixed = np.rint(points).astype(np.int32)
  background = shapes.pop("background").astype(np.int64).ravel().tolist()
  tones = np.concatenate([shapes[name][0] for name, _, _ in _DRAW_ORDER], 1)
  widths = np.concatenate([shapes[name][1] for name, _, _ in _DRAW_ORDER], 1)
  tones, widths = tones.astype(np.int64).tolist(), widths.astype(np.int64).tolist()
  image = np.empty((n, SIZE, SIZE), np.float32)
  blurred = np.empty((n, SIZE, SIZE), np.float32)
  for i in range(n):
    canvas = np.full((_CANVAS, _CANVAS), background[i], np.uint8)
    pts = fixed[i]
    for slices, (_, _, closed), tone, width in zip(_DRAW_SLICES, _DRAW_ORDER, tones[i], widths[i]):
      if width == 0:
        cv2.fillPoly(canvas, [pts[s] for s in slices], tone, cv2.LINE_8, _SHIFT)
      elif width > 0:
        cv2.polylines(canvas, [pts[s] for s in slices], closed, tone, width, cv2.LINE_8, _SHIFT)
    # Two 2x area halvings (OpenCV's fast path; one 4x step is slower).
    small = cv2.resize(canvas, (2 * SIZE, 2 * SIZE), interpolation=cv2.INTER_AREA)
    image[i] = cv2.resize(small, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    # Kernel (1, 2, 1) / 4 on integers: exact in float32, whatever OpenCV's code path.
    blurred[i] = cv2.GaussianBlur(image[i], (3, 3), 0)

  # Camera: blur, a lighting gradient, contrast and brightness, sensor noise.
  blur, light_x, light_y, contrast, brightness, noise_row, noise_col, noise_sigma = camera
  blurred -= image
  blurred *= blur.astype(np.float32)
  image += blurred
  image -= 128.0
  gain = (contrast + contrast * light_x * _RAMP_X) + (contrast * light_y) * _RAMP_Y
  image *= gain.astype(np.float32)
  noise = _NOISE_CROPS[noise_row.ravel(), noise_col.ravel()]
  noise *= noise_sigma.astype(np.float32)
  image += noise
  image += brightness.astype(np.float32)
  np.maximum(image, 0.0, out=image)
  np.minimum(image, 255.0, out=image)
  return np.rint(image).astype(np.uint8)


def _layout(labels: np.ndarray, r: np.ndarray, difficulty: float
            ) -> tuple[np.ndarray, dict[str, Any], list[np.ndarray]]:
  """Places the shapes of N faces at once (vectorised over faces).

  Returns points [N, _NUM_POINTS, 2] in fixed-point canvas units; per shape
  (tone [N, 1], line thickness [N, 1]: 0 = fill, -1 = not drawn), plus
  "background"; and the camera settings, each [N, 1, 1] or [N, 1].
  """
  n = labels.size
  u = list(r[:, :_NU, None].transpose(1, 0, 2))  # u[j]: [N, 1] uniforms
  q = r[:, _NU:].reshape(n, 4, _P)
  z = (q[:, 0] + q[:, 1] + q[:, 2] + q[:, 3] - 2.0) * _SQRT3  # unit-variance, near-Gaussian

  # Expression: neutral + strength * delta + jitter. Strength below 1 blends toward neutral.
  strength = 1.0 - difficulty * expressions.STRENGTH_SPREAD * u[0]
  params = _BASE + strength * _DELTA[labels] + difficulty * _JIT * z
  (eye_h, brow_y, brow_in_dy, brow_in_dx, brow_arch, mouth_y, mouth_w, mouth_c, mouth_o,
   lip_raise, mouth_t, wrinkle, frown, folds) = params[:, :, None].transpose(1, 0, 2)

  # Pose (48-pixel units; rotation up to about 10 degrees) and face shape. The
  # face fills the frame as in FER2013 crops (small faces were slow to learn).
  scale = 16.5 + 4.0 * u[1]  # half face width in pixels
  cx = 24.0 + (u[2] - 0.5) * 5.0
  cy = 26.0 + (u[3] - 0.5) * 4.0
  sin_a = (u[4] - 0.5) * 0.36
  cos_a = np.sqrt(1.0 - sin_a * sin_a)
  aspect = 1.18 + 0.22 * u[5]
  jaw = 0.10 + 0.25 * u[6]  # chin narrowing
  yaw = (u[7] - 0.5) * 0.16  # features slide sideways, a cheap head turn
  eye_dx = 0.34 + 0.08 * u[8]
  eye_y = -0.16 + (u[9] - 0.5) * 0.08
  eye_w = 0.12 + 0.04 * u[10]

  # Tones: skin, background, hair, features; contrast is sometimes low.
  skin = 95.0 + 130.0 * u[11]
  bg = 255.0 * u[12]
  bg = np.where(np.abs(bg - skin) < 25.0, np.where(skin > 120.0, skin - 45.0, skin + 45.0), bg)
  hair = 15.0 + 185.0 * u[13]
  dark = skin * (0.22 + 0.3 * u[14])
  has_hair = u[25] < 0.8

  # Points in face units (half face width = 1, y down), segment by segment.
  pts = np.empty((n, _NUM_POINTS, 2))

  def put(name, x, y):
    pts[:, _SEG[name], 0] = x
    pts[:, _SEG[name], 1] = y

  def ellipse(name, circle, x, y, rx, ry):
    put(name, circle[:, 0] * rx + x, circle[:, 1] * ry + y)

  ellipse("blob", _CIRCLE, (u[19] - 0.5) * 3.0, (u[20] - 0.5) * 3.0, 0.6 + u[21], 0.6 + u[22])
  ellipse("shoulders", _CIRCLE, 0.0, aspect + 0.95, 2.0, 0.6)
  ellipse("hair", _CIRCLE, 0.0, -0.12, 1.12, aspect * 1.05)  # back of the head
  put("neck", np.array([-0.35, 0.35, 0.4, -0.4]), np.array([0.6, 0.6, 1.6, 1.6]) * aspect)
  ellipse("ear_l", _CIRCLE16, -1.0, -0.05, 0.13, 0.24)
  ellipse("ear_r", _CIRCLE16, 1.0, -0.05, 0.13, 0.24)
  ellipse("face", _CIRCLE, 0.0, 0.0, 1.0 - jaw * _CHIN, aspect)
  # Fringe: the top of the head above an arched, tilted hairline.
  top_x = _CIRCLE[:, 0] * 1.04
  hairline = -aspect * (0.55 + 0.25 * u[26]) + 0.1 * (u[27] - 0.5) * top_x + 0.25 * top_x**2
  put("fringe", top_x, np.minimum(_CIRCLE[:, 1] * (aspect * 1.03) - 0.02, hairline))

  # Brows: inner end, arched middle, outer end; mirrored.
  x_in, x_out = 0.14 - brow_in_dx, eye_dx + 0.24
  brow_x = x_in + (x_out - x_in) * _S7
  brow_yy = (brow_y + brow_in_dy) + (0.02 - brow_in_dy) * _S7 - brow_arch * _ARCH7
  put("brow_l", -brow_x, brow_yy)
  put("brow_r", brow_x, brow_yy)
  # Eyes: sclera, pupil, upper lid line (the whole outline when narrowed to a slit).
  eye_h = np.maximum(0.018, eye_h)
  pupil_r = np.minimum(eye_h * 0.95, 0.055)
  gaze = (u[29] - 0.5) * 0.05
  for side, sign in (("l", -1.0), ("r", 1.0)):
    ellipse(f"eye_{side}", _CIRCLE16, sign * eye_dx, eye_y, eye_w, eye_h)
    ellipse(f"pupil_{side}", _CIRCLE16, sign * eye_dx + gaze, eye_y, pupil_r, pupil_r)
  # Nose: a bridge shadow and nostrils; disgust wrinkles it and flares the nostrils.
  nose_y = 0.22 + (u[30] - 0.5) * 0.06
  shade = np.where(u[31] < 0.5, 1.0, -1.0)
  put("bridge", shade * np.array([0.06, 0.09]),
      np.concatenate([np.full_like(nose_y, -0.02), nose_y - 0.05], 1))
  wrinkle = np.maximum(0.0, wrinkle)
  for side, sign in (("l", -1.0), ("r", 1.0)):
    ellipse(f"nostril_{side}", _CIRCLE16, sign * (0.08 + 0.04 * wrinkle), nose_y - 0.03 * wrinkle,
            0.04, 0.022)
  for i, y in enumerate((-0.08, -0.02, 0.04)):  # short, slightly arched lines on the bridge
    put(f"wrinkle_{i}", np.array([-0.09, 0.0, 0.09]), np.array([y + 0.012, y, y + 0.012]))
  put("frown_r", np.array([0.05, 0.04]), brow_y + np.array([0.08, 0.24]))
  put("frown_l", np.array([-0.05, -0.04]), brow_y + np.array([0.08, 0.24]))
  fold_x = mouth_w * 0.5 + 0.08
  fold_y = np.concatenate([nose_y, nose_y + 0.14, mouth_y - 0.02], 1)
  fold_x = np.concatenate([np.full_like(fold_x, 0.2), fold_x * 0.95, fold_x], 1)
  put("fold_r", fold_x, fold_y)
  put("fold_l", -fold_x, fold_y)
  # Mouth: a centre line mouth_y - mouth_c * x**2 (+ a slight tilt), an opening
  # of half-height mouth_o (round when narrow) and a one-sided upper-lip raise.
  half_w = np.maximum(0.08, mouth_w * 0.5)
  centre = mouth_y - mouth_c * _U**2 + (u[32] - 0.5) * 0.03 * _U
  opening = np.maximum(0.0, mouth_o) * _SQRT_RAMP
  lift = np.maximum(0.0, lip_raise) * np.where(u[33] < 0.5, _RAISE, _RAISE[::-1])
  put("mouth", np.concatenate([_U * half_w, _U[::-1] * half_w], 1),
      np.concatenate([centre - 0.5 * opening - lift, (centre + opening)[:, ::-1]], 1))
  put("teeth", _U * (half_w * 0.8), centre - 0.45 * opening)
  put("lips", _U * half_w, centre)

  # Face units -> fixed-point canvas units: yaw, rotation, scale, position.
  pts[:, _FIRST_FEATURE:, 0] += yaw
  c, s = cos_a * (scale * _FIX), sin_a * (scale * _FIX)
  x, y = pts[:, :, 0], pts[:, :, 1]
  pts = np.stack([x * c - y * s + cx * _FIX, x * s + y * c + cy * _FIX], -1)

  # Shapes: (tone, line width in face units or 0 to fill, whether this face has it).
  open_mouth = (mouth_o > 0.015) | (lip_raise > 0.03)
  narrow = eye_h <= 0.03
  yes = np.ones_like(skin, dtype=bool)
  spec = {
      "blob": (255.0 * u[23], 0.0, u[18] < 0.6),
      "shoulders": (255.0 * u[24], 0.0, yes),
      "hair": (hair, 0.0, has_hair),
      "neck": (skin * 0.88, 0.0, yes),
      "face": (skin, 0.0, yes),
      "fringe": (hair, 0.0, has_hair),
      "brows": (np.where(has_hair, np.minimum(dark, hair + 20.0), dark), 0.05 + 0.04 * u[28], yes),
      "sclera": (np.minimum(255.0, skin + 15.0 + 35.0 * u[15]), 0.0, yes),
      "pupils": (10.0 + 40.0 * u[16], 0.0, yes),
      "lids": (dark, 0.035, ~narrow),
      "slits": (dark, 0.035, narrow),
      "bridge": (skin * 0.8, 0.035, yes),
      "nostrils": (dark, 0.0, yes),
      "wrinkles": (skin - wrinkle * (skin - dark) * 0.6, 0.025, wrinkle > 0.0),
      "frown": (skin - frown * (skin - dark) * 0.5, 0.025, frown > 0.0),
      "folds": (skin - folds * (skin - dark) * 0.35 * strength, 0.03, folds > 0.0),
      "mouth_inside": (20.0 + 40.0 * u[34], 0.0, open_mouth),
      "teeth": (np.minimum(255.0, skin + 30.0), np.maximum(0.02, mouth_o * 0.6),
                open_mouth & (labels[:, None] == EMOTIONS.index("happy")) & (u[35] < 0.5)),
      "mouth_outline": (skin * (0.55 + 0.2 * u[17]), 0.035, open_mouth),
      "lips": (skin * (0.55 + 0.2 * u[17]) * 0.8, np.maximum(0.025, mouth_t), ~open_mouth),
  }
  shapes = {"background": bg}
  for name, (tone, width, drawn) in spec.items():
    thickness = np.maximum(1.0, np.rint(width * scale * _SS)) * (width > 0.0)
    shapes[name] = (np.broadcast_to(tone, skin.shape), np.where(drawn, thickness, -1.0))

  # Camera: blur mix, lighting gradient (x, y), contrast, brightness, noise crop and sigma.
  gx, gy = u[37] - 0.5, u[38] - 0.5
  g = 0.4 * u[39] / np.maximum(np.sqrt(gx * gx + gy * gy), 1e-9)
  camera = [a[:, :, None] for a in (
      0.15 + 0.85 * u[36], g * gx, g * gy, 0.7 + 0.45 * u[40], 128.0 + (u[44] - 0.5) * 60.0)]
  noise_at = _NOISE_BANK - SIZE + 1
  camera += [(u[41] * noise_at).astype(np.int64), (u[42] * noise_at).astype(np.int64),
             (2.0 + 8.0 * difficulty * u[43])[:, :, None]]
  return pts, shapes, camera


def contact_sheet(per_class: int = 10, seed: int = 0, zoom: int = 2,
                  difficulty: float = 1.0) -> np.ndarray:
  """A uint8 grid, one row per class, for eyeballing that the faces read as their labels."""
  labels = np.repeat(np.arange(NUM_CLASSES), per_class)
  faces = draw_faces(labels, seed, difficulty=difficulty)
  grid = faces.reshape(NUM_CLASSES, per_class, SIZE, SIZE).transpose(0, 2, 1, 3)
  grid = grid.reshape(NUM_CLASSES * SIZE, per_class * SIZE)
  return cv2.resize(grid, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)
