"""Inference from a training workdir or one checkpoint step, without the dataset.

`load()` rebuilds the model from WORKDIR/model.json and restores only a checkpoint's parameters and
batch-norm statistics (so any optimizer may have trained it); `FaceClassifier` jit-compiles uint8 faces ->
normalization -> centre crop -> test-time augmentation (the evaluation job's views) -> softmax.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from fer_jax import checkpoint_checksums, evaluation  # evaluation: TTA here is exactly what the eval job scores
from fer_jax import kernels as model_kernels
from fer_jax import model_card as model_card_lib
from fer_jax.model_card import ModelLoadError
from fer_jax.serving import classifier
from fer_jax.serving.classifier import Preprocessing

TTA_CHOICES = ("none", *evaluation.TTA_VIEWS)  # "none", then the evaluation job's views
KERNEL_CHOICES = ("auto", "onednn", "xla")  # convolutions for prediction: see inference_kernels


def probabilities_fn(apply_fn: Callable, prep: Preprocessing, tta: str = "none"
                     ) -> Callable[[Any, jnp.ndarray], jnp.ndarray]:
  """(variables, uint8 [N, H, W, C]) -> float32 probabilities [N, K], all preprocessing inside.

  Pure jax (no numpy constants that depend on N), so it also exports with a symbolic batch.
  """
  if tta not in TTA_CHOICES:
    raise ValueError(f"tta={tta!r} is not one of {', '.join(TTA_CHOICES)}.")
  if tta in evaluation.CROP_VIEWS and not prep.crop_size:
    raise ValueError(f"tta={tta!r} needs a model trained on crops (model.json crop_size > 0); use 'flip'.")
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


class FaceClassifier(classifier.BatchedClassifier):
  """A BatchedClassifier over one jit-compiled jax function, its variables placed on the device once."""

  def __init__(self, probabilities: Callable[[Any, Any], Any], variables: Any, prep: Preprocessing, *,
               batch_size: int = 32, tta: str = "none"):
    super().__init__(jax.jit(probabilities), jax.device_put(variables), prep, batch_size=batch_size, tta=tta)


@dataclasses.dataclass
class LoadedModel:
  """A model, its inference variables and preprocessing, and where they came from."""
  model: Any  # flax.linen.Module
  variables: dict[str, Any]
  prep: Preprocessing
  card: dict[str, Any]
  checkpoint: str  # the step directory
  step: int | None

  def classifier(self, *, batch_size: int = 32, tta: str = "none", kernels: str = "auto") -> FaceClassifier:
    """A FaceClassifier of this model; tta: none, flip, or ten_crop or multi_scale (crop-trained models only).

    kernels (KERNEL_CHOICES): "auto" runs the convolutions on oneDNN where it loads (a float32 model on a CPU:
    faster than XLA:CPU's, same results to float32 rounding; docs/BENCHMARKS.md, "Batch prediction"), else XLA's.
    """
    model = self.model
    chosen = inference_kernels(kernels, jnp.dtype(getattr(model, "dtype", jnp.float32)).name)
    if chosen is not model_kernels.DEFAULTS:  # the same parameters; only the convolution and pooling functions
      fields = {f.name for f in dataclasses.fields(model)}
      model = model.clone(**{k: v for k, v in chosen.model_kwargs().items() if k in fields})
    return FaceClassifier(probabilities_fn(model.apply, self.prep, tta), self.variables, self.prep,
                          batch_size=batch_size, tta=tta)


def inference_kernels(choice: str = "auto", dtype: str | None = "float32") -> model_kernels.Kernels:
  """The convolutions a classifier runs on: oneDNN's (fer_jax.kernels, the training step's) or XLA's.

  "auto": oneDNN for float32 models on a CPU backend where its library and handlers load, else XLA's (GPU, TPU,
  bfloat16). "onednn" raises ModelLoadError when it cannot load. Exports always use XLA's (no custom calls).
  """
  if choice not in KERNEL_CHOICES:
    raise ValueError(f"kernels={choice!r} is not one of {', '.join(KERNEL_CHOICES)}.")
  if choice == "xla" or (choice == "auto" and (jax.default_backend() != "cpu" or (dtype or "float32") != "float32")):
    return model_kernels.DEFAULTS
  import ml_collections  # pylint: disable=g-import-not-at-top
  from fer_jax.kernels import onednn_conv  # pylint: disable=g-import-not-at-top

  try:
    return model_kernels.select(ml_collections.ConfigDict({"conv_impl": "onednn"}), "cpu")
  except onednn_conv.OneDnnUnavailable as e:
    if choice == "onednn":
      raise ModelLoadError(f"kernels='onednn': {e}") from None
    return model_kernels.DEFAULTS


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


def _is_bundle(folder: str) -> bool:
  """A bundled model's folder (pretrained.py): model.json and params.npz, and no checkpoints of a training run."""
  return (os.path.isfile(os.path.join(folder, "params.npz")) and os.path.isfile(model_card_lib.path_in(folder))
          and not os.path.isdir(os.path.join(folder, "checkpoints")))


def named_leaves(tree: Any) -> list[tuple[str, Any]]:
  """(name, leaf) of each leaf of a tree of variables, named by tree path: "params/Conv_0/kernel"."""
  return [(jax.tree_util.keystr(path, simple=True, separator="/"), leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def shape_mismatches(expected: Any, stored: dict[str, Any], where: str) -> str:
  """The variables of `expected` that `stored` ({name: array or array metadata}) lacks or shapes otherwise."""
  problems = []
  for name, x in named_leaves(expected):
    if name not in stored:
      problems.append(f"{name} {tuple(x.shape)} is missing from {where}")
    elif tuple(stored[name].shape) != tuple(x.shape):
      problems.append(f"{name} is {tuple(stored[name].shape)} in {where} but {tuple(x.shape)} in the model")
  return "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")


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

  `workdir` (its latest finished step, or `step`) or `checkpoint` (WORKDIR/checkpoints/<step>; model.json is read
  from WORKDIR unless `model_card` says where). `dtype` overrides the config's compute dtype (e.g. float32 for a
  bfloat16-trained model on a CPU). `workdir` may also be a bundled model's folder (model.json + params.npz, as
  fer_jax/serving/weights/NAME or `python -m fer_jax.pretrained --output DIR` write). Raises ModelLoadError saying
  what to do when anything does not fit.
  """
  import orbax.checkpoint as ocp

  if workdir is not None and checkpoint is None and _is_bundle(workdir):
    from fer_jax.serving import pretrained  # pylint: disable=g-import-not-at-top  (it imports this module)

    if step is not None or model_card is not None:
      raise ModelLoadError(f"{workdir} is a bundled model (one set of weights): --step and --model_card do not "
                           "apply.")
    folder = os.path.abspath(workdir)
    return pretrained.load(os.path.basename(folder), weights_dir=os.path.dirname(folder), margin=margin, dtype=dtype)
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
  # A run with a moving average of its parameters (config.ema_decay > 0) is scored, and served, by the average.
  source = {k: "ema_params" if k == "params" and stored.get("ema_params") else k for k in abstract}
  stored = {name: x for name, x in named_leaves({k: stored.get(source[k], {}) for k in abstract})
            if hasattr(x, "shape")}
  problems = shape_mismatches(abstract, stored, "the checkpoint")
  if problems:
    raise ModelLoadError(
        f"checkpoint {step_dir} does not match the model that {card_path} describes "
        f"(model={config.get('model')}, model_kwargs={config.get('model_kwargs')}, input {list(prep.input_shape)}): "
        f"{problems}. Use the model.json of the run that wrote this checkpoint (--model_card).")
  try:
    item = {source[k]: v for k, v in abstract.items()}
    restored = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True))
  except Exception as e:
    raise ModelLoadError(f"cannot restore {state_dir} ({checkpoint_checksums.describe(e)}).") from e
  variables = {k: restored[source[k]] for k in abstract}
  if not all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(variables)):
    raise ModelLoadError(f"checkpoint {step_dir} holds NaN or Inf parameters (damaged, or saved from a diverged "
                         "run): use another step (--step N).")
  return LoadedModel(model=model, variables=variables, prep=prep, card=card, checkpoint=step_dir, step=step)
