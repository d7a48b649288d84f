"""ONNX: export a model with jax2onnx, and classify faces from the .onnx file with ONNX Runtime alone.

The graph takes uint8 faces [B, H, W, C] and does the rest, like the jax.export artifact (export.py); reading
needs onnxruntime, OpenCV and numpy only, so this module imports no jax until it exports. docs/PREDICTION.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import sys
import tempfile
import warnings
from typing import Any, Iterator

import numpy as np

from fer_jax.model_card import ModelLoadError
from fer_jax.serving import classifier

FORMAT = "fer_jax.onnx"
METADATA_KEY = "fer_jax"  # metadata_props entry holding the JSON below


def export(loaded: Any, output: str, *, tta: str = "none", overwrite: bool = False) -> str:
  """Writes inference.LoadedModel `loaded` to the .onnx file `output`; returns its path."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from fer_jax.serving import export as jax_export  # pylint: disable=g-import-not-at-top
  from fer_jax.serving import inference  # pylint: disable=g-import-not-at-top

  output = jax_export.check_output(output, overwrite)
  probabilities = inference.probabilities_fn(loaded.model.apply, loaded.prep, tta)
  with quiet_unless_failing():  # jax2onnx prints plugin tracebacks, DEBUG dumps and onnx_ir warnings on success
    try:
      import onnx  # pylint: disable=g-import-not-at-top
      from jax2onnx import to_onnx  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ModelLoadError(f"ONNX export needs jax2onnx and onnx ({e}): pip install -e '.[onnx]' in the "
                           "checkout.") from None
    try:
      model = to_onnx(lambda faces: probabilities(loaded.variables, faces),
                      [jax.ShapeDtypeStruct(("B", *loaded.prep.image_shape), jnp.uint8)])
    except Exception as e:  # a primitive or shape jax2onnx cannot convert: its log above says more
      raise ModelLoadError(f"jax2onnx could not convert the model: {type(e).__name__}: {e}") from e
  metadata = {"format": FORMAT, **jax_export.metadata_of(loaded, tta)}
  onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(metadata)})
  tmp = output + ".tmp"
  onnx.save_model(model, tmp)
  os.replace(tmp, output)
  return output


@contextlib.contextmanager
def quiet_unless_failing() -> Iterator[None]:
  """Holds back all that is printed, logged or warned inside (Python and C, stdout and stderr) and drops it on
  success; when the block raises, it is written to stderr first, so a real failure shows its context.

  Log handlers that libraries add to the root logger inside (jax2onnx's) are removed again on the way out.
  """
  for stream in (sys.stdout, sys.stderr):
    stream.flush()
  root, before = logging.getLogger(), list(logging.getLogger().handlers)
  with tempfile.TemporaryFile() as held, io.StringIO() as python_held:
    saved = [os.dup(1), os.dup(2)]
    try:
      os.dup2(held.fileno(), 1)
      os.dup2(held.fileno(), 2)
      with contextlib.redirect_stdout(python_held), contextlib.redirect_stderr(python_held), \
          warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    except BaseException:
      for fd, copy in zip((1, 2), saved):
        os.dup2(copy, fd)
      held.seek(0)
      sys.stderr.write(held.read().decode(errors="replace") + python_held.getvalue())
      sys.stderr.flush()
      raise
    finally:
      for fd, copy in zip((1, 2), saved):
        os.dup2(copy, fd)
        os.close(copy)
      for handler in root.handlers[:]:
        if handler not in before:
          root.removeHandler(handler)


@dataclasses.dataclass
class OnnxModel:
  """An ONNX Runtime session of an exported model, with the preprocessing it needs."""
  path: str
  session: Any  # onnxruntime.InferenceSession
  metadata: dict[str, Any]

  def __call__(self, faces: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, C] faces -> float32 probabilities [N, K]."""
    return self.session.run(None, {self.session.get_inputs()[0].name: np.ascontiguousarray(faces, np.uint8)})[0]

  def classifier(self, *, batch_size: int = 32, tta: str = "none", margin: float | None = None
                 ) -> classifier.BatchedClassifier:
    """A BatchedClassifier for predict; TTA is baked into the file, so `tta` must match it."""
    prep = classifier.artifact_preprocessing(self.path, self.metadata["preprocessing"], self.metadata["tta"], tta,
                                             margin)
    return classifier.BatchedClassifier(lambda _, faces: self(faces), None, prep, batch_size=batch_size,
                                        tta=self.metadata["tta"])


def load(path: str) -> OnnxModel:
  """Opens `path` with ONNX Runtime (CPU); ModelLoadError saying what is wrong."""
  try:
    import onnxruntime  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ModelLoadError("reading .onnx files needs onnxruntime: pip install onnxruntime.") from None
  if not os.path.isfile(path):
    raise ModelLoadError(f"{path} does not exist: make it with python -m fer_jax.export --format onnx.")
  try:
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
  except Exception as e:  # onnxruntime raises its own exception types for unreadable files
    raise ModelLoadError(f"{path} is not a readable ONNX model ({type(e).__name__}: {e}).") from None
  props = session.get_modelmeta().custom_metadata_map
  try:
    metadata = json.loads(props[METADATA_KEY])
    assert metadata.get("format") == FORMAT
  except (KeyError, ValueError, AssertionError):
    raise ModelLoadError(f"{path} is an ONNX model but not one fer_jax exported (no {METADATA_KEY!r} "
                         "metadata with class names and preprocessing).") from None
  return OnnxModel(path, session, metadata)
