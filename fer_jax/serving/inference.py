"""Inference from a training workdir or one checkpoint step, without the dataset.

`load()` reads WORKDIR/model.json (written by the trainer) to rebuild the model
and the preprocessing its training data had, then restores only the
parameters and batch-norm statistics of a checkpoint (the optimizer state is
not needed, so a checkpoint loads whatever optimizer trained it).
`FaceClassifier` turns face crops into class probabilities with one
jit-compiled function: uint8 pixels -> [0, 1] -> normalization -> centre crop
-> optional test-time augmentation (the evaluation job's views) -> softmax.

Preprocessing rules (what makes a detected face look like a training example):
  * size and colour: model.json `image_shape` [H, W, C] (48x48x1 for FER2013,
    the ExpW config's size and channels for ExpW); C = 1 is OpenCV's BGR->grey.
  * box margin: FER2013 (and the synthetic faces) are tight crops, and OpenCV's
    Haar boxes match them (median box/crop side 0.98 on 233 FER2013 test
    images), so no margin. ExpW crops are its label box plus the builder's
    margin (model.json `face_margin` when present, else the builder default
    0.2) on each side; Haar boxes are 0.91x ExpW's label boxes (median over 233
    faces of ../shared/data/expw_sample), so a detection is first grown to the
    label box's size. The grown box is clipped to the image and resized
    without keeping the aspect ratio, as the ExpW builder does.
  * resize: INTER_AREA when shrinking both sides, else bilinear (the builders').
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Sequence

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from fer_jax import checkpoint_checksums, evaluation  # evaluation: TTA here is exactly what the eval job scores
from fer_jax import model_card as model_card_lib
from fer_jax.data import faces
from fer_jax.model_card import ModelLoadError

TTA_CHOICES = ("none", *evaluation.TTA_VIEWS)  # "none", then the evaluation job's views

# Builder margin when model.json has no `face_margin` (tfds_builders/expw/expw.py ExpwConfig.margin).
DEFAULT_DATASET_MARGIN = {"expw": 0.2}
# Side of a Haar detection / side of the dataset's own face box (measured, see the module docstring).
HAAR_BOX_TO_DATASET_BOX = {"expw": 0.91}

Box = tuple[int, int, int, int]  # x, y, w, h in pixels of the image it was found in


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """How a face crop becomes a model input, as the training data was made."""
  class_names: tuple[str, ...]
  image_shape: tuple[int, int, int]  # (H, W, C) as stored in the dataset: crops are resized to this
  crop_size: int = 0                 # > 0: the model sees the centre crop_size x crop_size
  normalization: str = "unit"        # unit: [0, 1]; standardize: (x - mean) / std per channel
  mean: tuple[float, ...] | None = None
  std: tuple[float, ...] | None = None
  margin: float = 0.0                # fraction of a detected box's side added on each side

  @classmethod
  def from_card(cls, card: dict[str, Any], margin: float | None = None) -> "Preprocessing":
    """From a model.json dict; `margin` overrides the dataset's rule (see the module docstring)."""
    norm = card.get("normalization") or {"kind": "unit"}
    shape = tuple(int(d) for d in card["image_shape"])
    if len(shape) != 3 or shape[2] not in (1, 3):
      raise ModelLoadError(f"model.json image_shape {list(shape)} is not [H, W, 1 or 3].")
    if margin is None:
      margin = default_margin(card)
    kind = norm.get("kind", "unit")
    if kind == "standardize" and (not norm.get("mean") or not norm.get("std")):
      raise ModelLoadError("model.json normalization is 'standardize' but lacks mean/std.")
    return cls(
        class_names=tuple(card["class_names"]), image_shape=shape, crop_size=int(card.get("crop_size") or 0),
        normalization=kind,
        mean=tuple(float(v) for v in norm["mean"]) if kind == "standardize" else None,
        std=tuple(float(v) for v in norm["std"]) if kind == "standardize" else None,
        margin=float(margin))

  @property
  def input_shape(self) -> tuple[int, int, int]:
    """What the network itself takes (after the centre crop)."""
    h, w, c = self.image_shape
    return (self.crop_size, self.crop_size, c) if self.crop_size else (h, w, c)

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, data: dict[str, Any]) -> "Preprocessing":
    """Inverse of to_json (lists back to tuples)."""
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

  def face_pixels(self, image: np.ndarray, box: Box | None = None) -> np.ndarray:
    """uint8 (H, W, C) model pixels of one face: `box` plus margin, or the whole image when None.

    `image` is what cv2.imread gives: BGR (h, w, 3) or grey (h, w).
    """
    if box is not None:
      x, y, w, h = box
      window = faces.crop_window((y, x, x + w, y + h), image.shape[0], image.shape[1], self.margin)
      if window is None:
        raise ValueError(f"box {box} does not overlap the {image.shape[1]}x{image.shape[0]} image")
      y0, y1, x0, x1 = window
      image = image[y0:y1, x0:x1]
    return faces.resize_face(image, self.image_shape)


def default_margin(card: dict[str, Any]) -> float:
  """Margin per side, as a fraction of a Haar box, that reproduces the dataset's crops."""
  dataset = card.get("dataset") or ""
  margin = card.get("face_margin")
  if margin is None:
    margin = DEFAULT_DATASET_MARGIN.get(dataset, 0.0)
  scale = 1.0 / HAAR_BOX_TO_DATASET_BOX.get(dataset, 1.0)  # Haar box -> dataset's face box
  return ((1.0 + 2.0 * float(margin)) * scale - 1.0) / 2.0


def probabilities_fn(apply_fn: Callable, prep: Preprocessing, tta: str = "none"
                     ) -> Callable[[Any, jnp.ndarray], jnp.ndarray]:
  """(variables, uint8 [N, H, W, C]) -> float32 probabilities [N, K], all preprocessing inside.

  Pure jax (no numpy constants that depend on N), so it also exports with a symbolic batch.
  """
  if tta not in TTA_CHOICES:
    raise ValueError(f"tta={tta!r} is not one of {', '.join(TTA_CHOICES)}.")
  if tta == "ten_crop" and not prep.crop_size:
    raise ValueError("tta='ten_crop' needs a model trained on crops (model.json crop_size > 0); use 'flip'.")
  view = evaluation.VIEWS["plain" if tta == "none" else tta]
  mean = None if prep.mean is None else np.asarray(prep.mean, np.float32)
  inv_std = None if prep.std is None else (1.0 / np.asarray(prep.std, np.float32)).astype(np.float32)

  def probabilities(variables: Any, images: jnp.ndarray) -> jnp.ndarray:
    x = images.astype(jnp.float32) / jnp.float32(255.0)  # augment.to_float: exactly x / 255
    if mean is not None:  # stats.Normalizer
      x = (x - mean) * inv_std
    views = view(x, prep.crop_size)
    return jnp.mean(jnp.stack([jax.nn.softmax(apply_fn(variables, v, train=False)) for v in views]), axis=0)

  return probabilities


def bucket_size(n: int, batch_size: int) -> int:
  """The padded batch for n faces: the next power of two, at most batch_size."""
  return min(batch_size, 1 << max(0, n - 1).bit_length())


class FaceClassifier:
  """Batched class probabilities of preprocessed faces, through one jit-compiled function.

  Batches are padded to a power of two up to `batch_size`, so a stream of any
  face counts compiles at most log2(batch_size) + 1 times, and one face per
  video frame costs one face, not a full batch.

  probabilities: (variables, uint8 [N, H, W, C]) -> [N, K], e.g. probabilities_fn(...)
    or a deserialized jax.export function's `call`; it is jit-compiled here.
  """

  def __init__(self, probabilities: Callable[[Any, Any], Any], variables: Any, prep: Preprocessing, *,
               batch_size: int = 32, tta: str = "none"):
    if batch_size < 1 or batch_size & (batch_size - 1):
      raise ValueError(f"batch_size={batch_size} must be a power of two (1, 2, 4, ... 32, 64).")
    self.prep = prep
    self.batch_size = batch_size
    self.tta = tta
    self.variables = jax.device_put(variables)
    self._fn = jax.jit(probabilities)

  @property
  def class_names(self) -> tuple[str, ...]:
    return self.prep.class_names

  def __call__(self, faces: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """uint8 [N, H, W, C] faces (Preprocessing.face_pixels) -> float32 probabilities [N, K]."""
    faces = np.asarray(faces, np.uint8) if not isinstance(faces, np.ndarray) else faces
    if faces.ndim != 4 or faces.shape[1:] != self.prep.image_shape or faces.dtype != np.uint8:
      raise ValueError(f"faces must be uint8 [N, {', '.join(map(str, self.prep.image_shape))}], got "
                       f"{faces.dtype} {list(faces.shape)}: crop them with Preprocessing.face_pixels.")
    n = faces.shape[0]
    if n == 0:
      return np.zeros((0, len(self.class_names)), np.float32)
    out = []
    for start in range(0, n, self.batch_size):
      chunk = faces[start:start + self.batch_size]
      size = bucket_size(len(chunk), self.batch_size)
      if size != len(chunk):
        chunk = np.concatenate([chunk, np.zeros((size - len(chunk), *chunk.shape[1:]), np.uint8)])
      out.append(np.asarray(self._fn(self.variables, chunk))[:min(self.batch_size, n - start)])
    return np.concatenate(out)

  def warm_up(self) -> None:
    """Compiles every bucket now, so the first video frames are not slowed by compilation."""
    size = 1
    while size <= self.batch_size:
      self(np.zeros((size, *self.prep.image_shape), np.uint8))
      size *= 2


@dataclasses.dataclass
class LoadedModel:
  """A model, its inference variables and preprocessing, and where they came from."""
  model: Any  # flax.linen.Module
  variables: dict[str, Any]
  prep: Preprocessing
  card: dict[str, Any]
  checkpoint: str  # the step directory
  step: int | None

  def classifier(self, *, batch_size: int = 32, tta: str = "none") -> FaceClassifier:
    """A FaceClassifier of this model; tta: none, flip or ten_crop (crop-trained models only)."""
    return FaceClassifier(probabilities_fn(self.model.apply, self.prep, tta), self.variables, self.prep,
                          batch_size=batch_size, tta=tta)


def resolve_checkpoint(workdir: str | None = None, checkpoint: str | None = None, step: int | None = None,
                       model_card: str | None = None) -> tuple[str, int | None, str]:
  """(step directory, step, model.json path) from --workdir [--step] or --checkpoint."""
  from fer_jax import checkpointing  # pylint: disable=g-import-not-at-top  (grain and orbax: only when asked)

  if (workdir is None) == (checkpoint is None):
    raise ModelLoadError("Give exactly one of a training workdir or a checkpoint step directory.")
  if checkpoint is not None:
    checkpoint = os.path.abspath(checkpoint)
    if not os.path.isdir(checkpoint):
      raise ModelLoadError(f"checkpoint {checkpoint} does not exist: pass a step directory such as "
                           "WORKDIR/checkpoints/<step>.")
    if not os.path.isdir(os.path.join(checkpoint, "state")):
      steps = checkpointing.finalized_steps(checkpoint) or checkpointing.finalized_steps(
          checkpointing.checkpoint_dir(checkpoint))
      hint = f" (it holds steps {steps}: add /<step>, or use --workdir)" if steps else ""
      raise ModelLoadError(f"{checkpoint} is not a checkpoint step directory: it has no 'state' "
                           f"subdirectory{hint}.")
    name = os.path.basename(checkpoint)
    card = model_card or model_card_lib.path_in(os.path.dirname(os.path.dirname(checkpoint)))
    return checkpoint, int(name) if name.isdigit() else None, card
  workdir = os.path.abspath(workdir)
  if not os.path.isdir(workdir):
    raise ModelLoadError(f"workdir {workdir} does not exist.")
  root = checkpointing.checkpoint_dir(workdir)
  steps = checkpointing.finalized_steps(root)
  if not steps:
    raise ModelLoadError(f"no finished checkpoint in {root}: train first (checkpoints are saved every "
                         "config.checkpoint_every_steps and at the end).")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise ModelLoadError(f"step {step} is not in {root}; available steps: {', '.join(map(str, steps))}.")
  return checkpointing.step_dir(workdir, step), step, model_card or model_card_lib.path_in(workdir)


def _shapes_mismatch(expected: Any, stored: Any) -> list[str]:
  """Human-readable differences between the model's variables and the checkpoint's."""
  flat_expected = {jax.tree_util.keystr(p): x.shape for p, x in jax.tree_util.tree_flatten_with_path(expected)[0]}
  flat_stored = {jax.tree_util.keystr(p): tuple(x.shape) for p, x in
                 jax.tree_util.tree_flatten_with_path(stored)[0] if hasattr(x, "shape")}
  problems = []
  for key, shape in flat_expected.items():
    if key not in flat_stored:
      problems.append(f"{key} {tuple(shape)} is missing from the checkpoint")
    elif tuple(shape) != flat_stored[key]:
      problems.append(f"{key} is {flat_stored[key]} in the checkpoint but {tuple(shape)} in the model")
  return problems


def model_from_card(card: dict[str, Any], card_path: str, *, margin: float | None = None,
                    dtype: str | None = None) -> tuple[Any, Preprocessing, dict[str, Any]]:
  """(flax model, preprocessing, abstract inference variables) that model.json `card` describes.

  The abstract variables ({"params": ..., "batch_stats": ...} as ShapeDtypeStructs on
  one device) are what a checkpoint or a bundled parameter file must fill.
  """
  from fer_jax import model_factory  # pylint: disable=g-import-not-at-top

  config = model_card_lib.config_of(card)
  if dtype is not None:
    config.dtype = dtype
  prep = Preprocessing.from_card(card, margin)
  try:
    model = model_factory.create_model(config, int(card["num_classes"]))  # flax's own kernels
  except (ValueError, TypeError) as e:
    raise ModelLoadError(f"cannot build the model from {card_path}: {e}") from e
  sample = jnp.zeros((1, *prep.input_shape), jnp.float32)
  abstract = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, sample, train=False))
  abstract = {k: v for k, v in abstract.items() if k in ("params", "batch_stats") and v}
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract)
  return model, prep, abstract


def load(workdir: str | None = None, *, checkpoint: str | None = None, step: int | None = None,
         model_card: str | None = None, margin: float | None = None, dtype: str | None = None) -> LoadedModel:
  """Rebuilds the model from model.json and restores a checkpoint's params (and batch stats).

  workdir: the training workdir (latest finished step, or `step`); or
  checkpoint: one step directory WORKDIR/checkpoints/<step> (model.json is read
  from WORKDIR unless `model_card` says where). `dtype` overrides the config's
  compute dtype (e.g. float32 for a bfloat16-trained model on a CPU).
  Raises ModelLoadError with what to do when anything does not fit.
  """
  import orbax.checkpoint as ocp

  step_dir, step, card_path = resolve_checkpoint(workdir, checkpoint, step, model_card)
  card = model_card_lib.read(card_path)
  model, prep, abstract = model_from_card(card, card_path, margin=margin, dtype=dtype)
  config = card["config"]

  try:
    checkpoint_checksums.verify(step_dir)
  except checkpoint_checksums.DamagedCheckpointError as e:
    raise ModelLoadError(f"checkpoint {step_dir} is damaged: {e}. Use another step (--step N) or retrain.") from None
  state_dir = os.path.join(step_dir, "state")
  checkpointer = ocp.PyTreeCheckpointer()
  try:
    stored = checkpointer.metadata(state_dir).item_metadata.tree
  except Exception as e:  # orbax raises several types for a damaged or foreign directory
    raise ModelLoadError(
        f"{state_dir} is not a readable orbax checkpoint ({checkpoint_checksums.describe(e)}).") from e
  problems = _shapes_mismatch(abstract, {k: stored.get(k, {}) for k in abstract})
  if problems:
    listed = "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
    raise ModelLoadError(
        f"checkpoint {step_dir} does not match the model that {card_path} describes "
        f"(model={config.get('model')}, model_kwargs={config.get('model_kwargs')}, input {list(prep.input_shape)}): "
        f"{listed}. Use the model.json of the run that wrote this checkpoint (--model_card).")
  try:
    restored = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
        item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract), partial_restore=True))
  except Exception as e:
    raise ModelLoadError(f"cannot restore {state_dir} ({checkpoint_checksums.describe(e)}).") from e
  variables = {k: restored[k] for k in abstract}
  if not all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(variables)):
    raise ModelLoadError(f"checkpoint {step_dir} holds NaN or Inf parameters (damaged, or saved from a diverged "
                         "run): use another step (--step N).")
  return LoadedModel(model=model, variables=variables, prep=prep, card=card, checkpoint=step_dir, step=step)
