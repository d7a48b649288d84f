"""The trainer's validation: its eval step compiled ahead of time in the background, and a first validation
that costs what later ones cost (its setup, compile and scoring logged apart once).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from fer_jax import checkpointing, evaluation, parallel, startup_timer
from fer_jax.data import pipeline


def eval_batch_spec(config: ml_collections.ConfigDict, image_shape: tuple[int, ...],
                    mesh: jax.sharding.Mesh) -> dict[str, jax.ShapeDtypeStruct]:
  """The global eval batch as pipeline.create_eval_dataset yields it and parallel.global_batch places it."""
  sharding = parallel.data_sharding(mesh)
  n = config.eval_batch_size
  return {"image": jax.ShapeDtypeStruct((n, *image_shape), jnp.float32, sharding=sharding),
          "label": jax.ShapeDtypeStruct((n,), jnp.int32, sharding=sharding),
          "mask": jax.ShapeDtypeStruct((n,), jnp.bool_, sharding=sharding)}


class Validator:
  """Scores the model on config.data.eval_split in config.validation_view (plain, or a TTA view's averaged
  softmax); `compile_in_background` first, then `run` at each validation."""

  def __init__(self, config: ml_collections.ConfigDict, evaluator: evaluation.Evaluator,
               eval_image_shape: tuple[int, ...]):
    self.config = config
    self.evaluator = evaluator
    self.view = config.validation_view
    self._batch_spec = eval_batch_spec(config, eval_image_shape, evaluator.mesh)
    self._thread: threading.Thread | None = None
    self._error: BaseException | None = None
    self._first = True

  def compile_in_background(self, abstract_variables: Any) -> None:
    """Starts compiling the validation view's eval step (for variables shaped and placed like these) in a thread."""
    def compile_step():
      try:
        self.evaluator.compile_ahead(abstract_variables, self._batch_spec, view=self.view)
      except BaseException as e:  # pylint: disable=broad-except
        self._error = e  # Raised where the step is needed: in run().

    self._thread = threading.Thread(target=compile_step, name="fer_jax-eval-compile", daemon=True)
    self._thread.start()

  def wait_compiled(self) -> bool:
    """Waits for a background compile (a run that ends early must not leave it running); whether one ran."""
    if self._thread is None:
      return False
    self._thread.join()
    self._thread = None
    if self._error is not None:
      error, self._error = self._error, None
      raise error
    return True

  def close(self) -> None:
    """Joins a background compile still running: a process that exits while XLA compiles in a thread aborts
    (SIGABRT, exit code 134). Its error, if any, is dropped: nothing needs the step any more."""
    if self._thread is not None:
      self._thread.join()
      self._thread = self._error = None

  def run(self, variables: Any, stop: Callable[[], bool] | None = None) -> dict[str, float] | None:
    """{"val_loss", "val_accuracy"}; None when `stop` (see Evaluator.confusion) cut it short."""
    start = time.perf_counter()
    eval_ds = pipeline.create_eval_dataset(self.config, self.config.data.eval_split,
                                           process_index=jax.process_index(), process_count=jax.process_count())
    set_up = time.perf_counter()
    ahead = self._thread is not None
    if self._first and not ahead:
      self.compile_in_background(variables)
    self.wait_compiled()
    compiled = time.perf_counter()
    try:
      confusion, loss = self.evaluator.confusion(variables, eval_ds, view=self.view, stop=stop)
    except evaluation.Interrupted:
      return None
    if self._first:
      self._first = False
      logging.info("%s", startup_timer.first_validation_line(set_up - start, compiled - set_up,
                                                             time.perf_counter() - compiled, ahead=ahead))
    accuracy = float(np.trace(confusion) / max(confusion.sum(), 1))
    return {"val_loss": loss, checkpointing.VAL_ACCURACY: accuracy}
