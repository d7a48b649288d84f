"""The models that ship with fer_jax (fer_jax/serving/weights/<name>/), so prediction needs no training.

    python -m fer_jax.pretrained --workdir runs/fer2013_cpu --step N --name fer2013_cpu   # (re)make one

A bundle's files: docs/PREDICTION.md, "Bundled models"; what the shipped model is good for: docs/MODEL_CARD.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import numpy as np

from fer_jax import model_card
from fer_jax.serving import inference

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
DEFAULT = "fer2013_cpu"
PARAMS_FILE = "params.npz"


def available(weights_dir: str | None = None) -> list[str]:
  """Names of the bundles in `weights_dir` (default: this installation's)."""
  weights_dir = weights_dir or WEIGHTS_DIR
  if not os.path.isdir(weights_dir):
    return []
  return sorted(n for n in os.listdir(weights_dir) if os.path.isfile(os.path.join(weights_dir, n, PARAMS_FILE)))


def bundle_dir(name: str = DEFAULT, weights_dir: str | None = None) -> str:
  return os.path.join(weights_dir or WEIGHTS_DIR, name)


def write(loaded: inference.LoadedModel, output: str, *, extra: dict[str, Any] | None = None,
          dtype: str | None = None) -> str:
  """Writes `loaded` (an inference.LoadedModel) as a bundle folder `output`; returns its path.

  `dtype` is the compute dtype the bundle is served in, when not the training config's: a model trained
  in bfloat16 on a CPU's bf16 convolutions serves in float32, which every CPU runs fast (the parameters
  are float32 either way). model.json keeps the training dtype as bundle.trained_dtype.
  """
  os.makedirs(output, exist_ok=True)
  arrays = {name: np.asarray(leaf, np.float32) for name, leaf in inference.named_leaves(loaded.variables)}
  card = dict(loaded.card)
  card["bundle"] = {"step": loaded.step, **(extra or {})}
  trained_dtype = card.get("config", {}).get("dtype", "float32")
  if dtype is not None and dtype != trained_dtype:
    card["config"] = {**card["config"], "dtype": dtype}
    card["bundle"]["trained_dtype"] = trained_dtype
  tmp = os.path.join(output, ".params.tmp.npz")
  np.savez_compressed(tmp, **arrays)
  os.replace(tmp, os.path.join(output, PARAMS_FILE))
  with open(model_card.path_in(output), "w") as f:
    json.dump(card, f, indent=2)
  return output


def load(name: str = DEFAULT, *, weights_dir: str | None = None, margin: float | None = None,
         dtype: str | None = None) -> inference.LoadedModel:
  """The bundled model `name` as an inference.LoadedModel; ModelLoadError says what is wrong."""
  import jax

  folder = bundle_dir(name, weights_dir)
  params_path = os.path.join(folder, PARAMS_FILE)
  if not os.path.isfile(params_path):
    raise inference.ModelLoadError(
        f"no bundled model {name!r} ({params_path} is missing); there are: "
        f"{', '.join(available(weights_dir)) or 'none'}. Pass --workdir or --checkpoint to use your own model.")
  card_path = model_card.path_in(folder)
  card = model_card.read(card_path)
  model, prep, abstract = inference.model_from_card(card, card_path, margin=margin, dtype=dtype)
  try:
    with np.load(params_path) as stored:
      arrays = {k: stored[k] for k in stored.files}
  except (OSError, ValueError) as e:
    raise inference.ModelLoadError(f"{params_path} is not a readable .npz file ({e}); reinstall fer_jax.") from e
  problems = inference.shape_mismatches(abstract, arrays, "the bundle")
  if problems:
    raise inference.ModelLoadError(f"{params_path} does not match the model {card_path} describes: {problems}; "
                                   "reinstall fer_jax.")
  leaves = [jax.device_put(arrays[n].astype(x.dtype), x.sharding) for n, x in inference.named_leaves(abstract)]
  variables = jax.tree.unflatten(jax.tree.structure(abstract), leaves)
  return inference.LoadedModel(model=model, variables=variables, prep=prep, card=card, checkpoint=folder,
                               step=card.get("bundle", {}).get("step"))


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m fer_jax.pretrained",
                              description="Write a training run's checkpoint as a bundle that ships with fer_jax.")
  p.add_argument("--workdir", required=True, help="training workdir")
  p.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
  p.add_argument("--name", default=DEFAULT, help="bundle name: fer_jax/serving/weights/<name>")
  p.add_argument("--output", help="bundle folder to write instead of fer_jax/serving/weights/<name>")
  p.add_argument("--dtype", choices=("float32", "bfloat16"),
                 help="compute dtype to serve the bundle in (default: the training config's)")
  p.add_argument("--note", action="append", default=[], metavar="KEY=VALUE",
                 help="recorded in model.json's bundle entry, e.g. validation_accuracy=0.69")
  args = p.parse_args(argv)
  import logging
  logging.getLogger("absl").setLevel(logging.ERROR)
  extra = {}
  for note in args.note:
    key, sep, value = note.partition("=")
    if not sep:
      print(f"pretrained: error: --note {note!r} is not KEY=VALUE.", file=sys.stderr)
      return 2
    extra[key] = value
  try:
    loaded = inference.load(args.workdir, step=args.step)
  except inference.ModelLoadError as e:
    print(f"pretrained: error: {e}", file=sys.stderr)
    return 2
  path = write(loaded, args.output or bundle_dir(args.name), extra=extra, dtype=args.dtype)
  size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
  print(f"pretrained: wrote {path} (step {loaded.step}, {size / 1e6:.1f} MB)", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
