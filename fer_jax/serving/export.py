"""A self-contained inference artifact: serialized StableHLO (jax.export), parameters and preprocessing.

    python -m fer_jax.export --workdir runs/fer2013_cnn --output fer2013_cnn.fer [--step N] [--tta flip]
    python -m fer_jax.export --pretrained --format onnx --output fer2013_cpu.onnx   # the bundled model

`load(path)` needs only jax and numpy: flax and fer_jax's model code are imported only to export.
The artifact's files, the ONNX format (onnx_model.py) and their use: docs/PREDICTION.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from typing import Any, Sequence

import numpy as np

from fer_jax.model_card import ModelLoadError

FORMAT = "fer_jax.export"
FORMAT_VERSION = 1
EXPORTED_FILE = "exported.bin"
PARAMS_FILE = "params.npz"
METADATA_FILE = "model.json"
DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")


class ExportError(ModelLoadError):
  """The artifact cannot be written or read; the message says what to do."""


def _require_flatbuffers() -> None:
  try:
    import flatbuffers  # noqa: F401  (jax.export's serialization format)
  except ImportError as e:
    raise ExportError("jax.export serialization needs the 'flatbuffers' package: pip install flatbuffers") from e


def check_output(output: str, overwrite: bool) -> str:
  """The absolute path of an artifact to write; ExportError when it exists and `overwrite` is not set."""
  output = os.path.abspath(output)
  if os.path.exists(output) and not overwrite:
    raise ExportError(f"{output} exists: remove it or pass --overwrite.")
  return output


def metadata_of(loaded: Any, tta: str) -> dict[str, Any]:
  """What every artifact format records about inference.LoadedModel `loaded`: classes, preprocessing, source."""
  config = loaded.card["config"]
  return {"class_names": list(loaded.prep.class_names), "preprocessing": loaded.prep.to_json(), "tta": tta,
          "source": {"checkpoint": loaded.checkpoint, "step": loaded.step, "dataset": loaded.card.get("dataset"),
                     "model": config.get("model"), "compute_dtype": config.get("dtype")}}


def export_model(loaded: Any, output: str, *, tta: str = "none", platforms: Sequence[str] = DEFAULT_PLATFORMS,
                 overwrite: bool = False) -> str:
  """Writes the artifact of an inference.LoadedModel to directory `output`; returns its path."""
  import jax
  import jax.numpy as jnp

  from fer_jax.serving import inference

  _require_flatbuffers()
  output = check_output(output, overwrite)
  prep = loaded.prep
  probabilities = inference.probabilities_fn(loaded.model.apply, prep, tta)
  named, treedef = inference.named_leaves(loaded.variables), jax.tree.structure(loaded.variables)
  leaves = [np.asarray(x) for _, x in named]

  def serve(leaves: list[jax.Array], faces: jax.Array) -> jax.Array:
    return probabilities(jax.tree.unflatten(treedef, leaves), faces)

  batch, = jax.export.symbolic_shape("b")
  arg_specs = ([jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves],
               jax.ShapeDtypeStruct((batch, *prep.image_shape), jnp.uint8))
  try:
    exported = jax.export.export(jax.jit(serve), platforms=tuple(platforms))(*arg_specs)
  except Exception as e:  # lowering errors name the platform or op that failed
    raise ExportError(f"jax.export failed for platforms {list(platforms)}: {type(e).__name__}: {e}") from e
  metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, **metadata_of(loaded, tta),
              "input": {"shape": ["b", *prep.image_shape], "dtype": "uint8"},
              "leaves": [name for name, _ in named],
              "platforms": list(exported.platforms), "jax_version": jax.__version__}
  tmp = output + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  with open(os.path.join(tmp, EXPORTED_FILE), "wb") as f:
    f.write(exported.serialize())
  np.savez(os.path.join(tmp, PARAMS_FILE), **{f"leaf_{i:04d}": x for i, x in enumerate(leaves)})
  with open(os.path.join(tmp, METADATA_FILE), "w") as f:
    json.dump(metadata, f, indent=2)
  if os.path.exists(output):
    shutil.rmtree(output)
  os.replace(tmp, output)
  return output


class ExportedModel:
  """A loaded artifact: call it on uint8 faces [N, H, W, C] for float32 probabilities [N, K]."""

  def __init__(self, path: str, exported: Any, leaves: list[np.ndarray], metadata: dict[str, Any]):
    import jax

    self.path = path
    self.metadata = metadata
    self.exported = exported
    self.leaves = [jax.device_put(x) for x in leaves]
    self.class_names: tuple[str, ...] = tuple(metadata["class_names"])
    self.preprocessing: dict[str, Any] = metadata["preprocessing"]  # classifier.Preprocessing.to_json()
    self.image_shape: tuple[int, ...] = tuple(self.preprocessing["image_shape"])
    self.tta: str = metadata["tta"]
    self._call = jax.jit(exported.call)

  def __call__(self, faces: np.ndarray) -> np.ndarray:
    faces = np.asarray(faces)
    if faces.dtype != np.uint8 or faces.ndim != 4 or faces.shape[1:] != self.image_shape:
      raise ValueError(f"faces must be uint8 [N, {', '.join(map(str, self.image_shape))}], got "
                       f"{faces.dtype} {list(faces.shape)}.")
    return np.asarray(self._call(self.leaves, faces))

  def classifier(self, *, batch_size: int = 32, tta: str = "none", margin: float | None = None) -> Any:
    """An inference.FaceClassifier over this artifact, for fer_jax.predict (imports cv2, not flax)."""
    from fer_jax.serving import classifier, inference

    prep = classifier.artifact_preprocessing(self.path, self.preprocessing, self.tta, tta, margin, ExportError)
    return inference.FaceClassifier(self.exported.call, self.leaves, prep, batch_size=batch_size, tta=self.tta)


def load(path: str) -> ExportedModel:
  """Reads an artifact with jax.export.deserialize and numpy only (no flax, no fer_jax model code)."""
  import jax

  meta_path = os.path.join(path, METADATA_FILE)
  if not os.path.isfile(meta_path):
    raise ExportError(f"{path} is not a fer_jax export: {METADATA_FILE} is missing "
                      "(make one with python -m fer_jax.export).")
  with open(meta_path) as f:
    metadata = json.load(f)
  if metadata.get("format") != FORMAT or metadata.get("format_version", 0) > FORMAT_VERSION:
    raise ExportError(f"{meta_path} is format {metadata.get('format')!r} version "
                      f"{metadata.get('format_version')}; this fer_jax reads {FORMAT!r} up to {FORMAT_VERSION}.")
  _require_flatbuffers()
  try:
    with open(os.path.join(path, EXPORTED_FILE), "rb") as f:
      exported = jax.export.deserialize(bytearray(f.read()))
  except Exception as e:
    raise ExportError(f"cannot deserialize {os.path.join(path, EXPORTED_FILE)} with jax {jax.__version__} "
                      f"(exported with jax {metadata.get('jax_version')}): {type(e).__name__}: {e}") from e
  platform = jax.export.default_export_platform()  # "cuda" or "rocm" where jax.default_backend() says "gpu"
  if platform not in exported.platforms:
    raise ExportError(f"{path} was exported for {list(exported.platforms)}, not for this {platform} backend: "
                      f"re-export with --platforms {platform}.")
  with np.load(os.path.join(path, PARAMS_FILE)) as params:
    leaves = [params[f"leaf_{i:04d}"] for i in range(len(metadata["leaves"]))]
  return ExportedModel(path, exported, leaves, metadata)


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m fer_jax.export", description=__doc__.split("\n\n")[0])
  p.add_argument("--pretrained", nargs="?", const="fer2013_cpu", metavar="NAME",
                 help="a model bundled with fer_jax (fer_jax/serving/weights/NAME; NAME defaults to fer2013_cpu)")
  p.add_argument("--workdir", help="training workdir (latest checkpoint, or --step), or a bundled model's folder")
  p.add_argument("--checkpoint", help="one step directory, WORKDIR/checkpoints/<step>")
  p.add_argument("--step", type=int)
  p.add_argument("--model_card", help="model.json to use instead of the workdir's")
  p.add_argument("--output", required=True, help="artifact to write: a directory such as model.fer, or model.onnx")
  p.add_argument("--format", choices=("jax", "onnx"), default="jax",
                 help="jax: a jax.export artifact (jax runs it); onnx: an ONNX file (onnxruntime alone runs it)")
  p.add_argument("--tta", choices=("none", "flip", "ten_crop", "multi_scale"), default="none",
                 help="baked into the function")
  p.add_argument("--margin", type=float, help="face box margin recorded for detection (default: the dataset's)")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), help="compute dtype instead of the config's")
  p.add_argument("--platforms", default=",".join(DEFAULT_PLATFORMS), help="comma-separated: cpu,cuda,tpu")
  p.add_argument("--overwrite", action="store_true")
  args = p.parse_args(argv)
  import logging
  logging.getLogger("absl").setLevel(logging.ERROR)
  from fer_jax.serving import inference

  try:
    if sum(x is not None for x in (args.pretrained, args.workdir, args.checkpoint)) != 1:
      raise ExportError("give one of --pretrained [NAME] (the bundled model), --workdir or --checkpoint.")
    if args.pretrained is not None:
      if args.step is not None or args.model_card:
        raise ExportError("--step and --model_card apply to --workdir and --checkpoint only.")
      from fer_jax.serving import pretrained  # pylint: disable=g-import-not-at-top
      loaded = pretrained.load(args.pretrained, margin=args.margin, dtype=args.dtype)
    else:
      loaded = inference.load(args.workdir, checkpoint=args.checkpoint, step=args.step, model_card=args.model_card,
                              margin=args.margin, dtype=args.dtype)
    if args.format == "onnx":
      if not args.output.endswith(".onnx"):
        raise ExportError(f"--output {args.output}: an ONNX file name ends in .onnx (predict goes by it).")
      from fer_jax.serving import onnx_model  # pylint: disable=g-import-not-at-top
      path = onnx_model.export(loaded, args.output, tta=args.tta, overwrite=args.overwrite)
    else:
      path = export_model(loaded, args.output, tta=args.tta, overwrite=args.overwrite,
                          platforms=[x.strip() for x in args.platforms.split(",") if x.strip()])
  except (inference.ModelLoadError, ExportError, ValueError) as e:
    print(f"export: error: {e}", file=sys.stderr)
    return 2
  source = f"step {loaded.step}" if args.pretrained is None else f"bundled {args.pretrained}, step {loaded.step}"
  print(f"export: wrote {path} ({source}, {len(loaded.prep.class_names)} classes, "
        f"faces uint8 [b, {', '.join(map(str, loaded.prep.image_shape))}])", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
