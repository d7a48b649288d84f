"""WORKDIR/model.json, the model card: what inference needs to rebuild a model and cut faces as training did.

Prediction, export and the bundled models read it instead of the dataset, which the serving machine may lack.
This module is the one owner of its format.
"""

from __future__ import annotations

import json
import os
from typing import Any

FILENAME = "model.json"
_REQUIRED = ("class_names", "num_classes", "image_shape", "config")


class ModelLoadError(Exception):
  """The model or its checkpoint cannot be loaded; the message says what to fix."""


def path_in(workdir: str) -> str:
  return os.path.join(workdir, FILENAME)


def write(config: Any, workdir: str, info: Any) -> dict[str, Any]:
  """Writes WORKDIR/model.json (atomically) for `config` trained on dataset `info`; returns the card."""
  from fer_jax.data import builders, stats  # pylint: disable=g-import-not-at-top  (readers need no tfds)

  standardize = config.data.normalization == "standardize"
  mean, std = stats.normalization_stats(config) if standardize else (None, None)
  card = {
      "dataset": config.data.name, "dataset_config": config.data.config or None,
      "class_names": list(info.class_names), "num_classes": info.num_classes,
      "image_shape": list(info.eval_image_shape),  # full-size input, as stored in the dataset
      "crop_size": int(config.data.augment.crop_size),  # model input side when > 0 (centre crop)
      "normalization": {"kind": config.data.normalization, "mean": mean, "std": std},
      # Margin the builder added around each labelled face box (ExpW), so prediction crops alike.
      "face_margin": getattr(builders.prepared_builder(config).builder_config, "margin", None),
      "config": json.loads(config.to_json_best_effort()),
  }
  os.makedirs(workdir, exist_ok=True)
  tmp = os.path.join(workdir, f".{FILENAME}.tmp")
  with open(tmp, "w") as f:
    json.dump(card, f, indent=2)
  os.replace(tmp, path_in(workdir))
  return card


def read(path: str) -> dict[str, Any]:
  """model.json as a dict, or ModelLoadError saying what is missing."""
  if not os.path.isfile(path):
    raise ModelLoadError(
        f"{path} not found. The trainer writes it when training starts; pass the training workdir "
        "(--workdir) or a step directory inside WORKDIR/checkpoints (--checkpoint), or --model_card PATH "
        "if you moved it.")
  try:
    with open(path) as f:
      card = json.load(f)
  except (OSError, ValueError) as e:
    raise ModelLoadError(f"{path} is not readable JSON ({e}).") from e
  missing = [k for k in _REQUIRED if k not in card]
  if missing:
    raise ModelLoadError(f"{path} lacks {', '.join(missing)}: rewrite it by restarting training from this workdir.")
  return card


def config_of(card: dict[str, Any]) -> Any:
  """The training config recorded in the card, as an ml_collections.ConfigDict (JSON lists back to tuples)."""
  import ml_collections  # pylint: disable=g-import-not-at-top

  def tuples(value: Any) -> Any:  # flax module fields want hashable tuples
    if isinstance(value, list):
      return tuple(tuples(v) for v in value)
    if isinstance(value, dict):
      return {k: tuples(v) for k, v in value.items()}
    return value

  return ml_collections.ConfigDict(tuples(card["config"]))
