"""A SIGTERM during validation stops it between two batches; the trainer then saves that step and returns."""

from __future__ import annotations

import os
import signal

import numpy as np

from fer_jax import checkpointing, model_factory, train
from fer_jax.data import pipeline
from train_test import tiny_config


def test_stop_cuts_a_validation_short_between_batches(tmp_path, synthetic_tiny_dir):
  config = tiny_config(synthetic_tiny_dir)
  config.eval_batch_size = 16  # 70 validation faces: 5 batches.
  config.compilation_cache_dir = ""
  trainer = train.Trainer(config, str(tmp_path / "run"))
  state = trainer._init_state()  # pylint: disable=protected-access
  asked = []

  def stop() -> bool:
    asked.append(True)
    return len(asked) == 3

  assert trainer.validate(state, stop=stop) is None
  assert len(asked) == 3  # Asked before each batch; the third answer stopped it.
  full = trainer.validate(state, stop=lambda: False)
  assert 0.0 <= full[checkpointing.VAL_ACCURACY] <= 1.0 and np.isfinite(full["val_loss"])


def test_sigterm_during_validation_saves_that_step_unvalidated_and_returns(tmp_path, synthetic_tiny_dir):
  config = tiny_config(synthetic_tiny_dir)
  config.eval_batch_size = 16
  config.compilation_cache_dir = ""
  config.num_train_steps, config.eval_every_steps, config.checkpoint_every_steps = 8, 4, 1000
  workdir = str(tmp_path / "run")
  trainer = train.Trainer(config, workdir)
  confusion = trainer.evaluator.confusion

  def preempted_confusion(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)  # Arrives as the validation at step 4 starts.
    return confusion(*args, **kwargs)

  trainer.evaluator.confusion = preempted_confusion
  last = trainer.train()
  assert trainer.preempted_at_step == 4
  assert "val_accuracy" not in last
  assert checkpointing.finalized_steps(checkpointing.checkpoint_dir(workdir)) == [4]


def test_validation_scores_the_configured_view(tmp_path, synthetic_tiny_dir):
  """config.validation_view="flip": validation's loss and accuracy are the flip view's, not the plain view's."""
  config = tiny_config(synthetic_tiny_dir)
  config.compilation_cache_dir = ""
  config.validation_view = "flip"
  trainer = train.Trainer(config, str(tmp_path / "run"))
  state = trainer._init_state()  # pylint: disable=protected-access
  variables = model_factory.model_variables(state)
  scored = trainer.validate(state)

  def score(view):
    eval_ds = pipeline.create_eval_dataset(config, config.data.eval_split, process_index=0, process_count=1)
    confusion, loss = trainer.evaluator.confusion(variables, eval_ds, view=view)
    return float(np.trace(confusion) / confusion.sum()), loss

  (flip_accuracy, flip_loss), (_, plain_loss) = score("flip"), score("plain")
  assert abs(flip_loss - plain_loss) > 1e-6  # An untrained network is not mirror-symmetric: the views differ.
  np.testing.assert_allclose(scored["val_loss"], flip_loss, rtol=1e-6)
  assert scored[checkpointing.VAL_ACCURACY] == flip_accuracy


def test_validation_scores_the_raw_parameters_only_when_asked(tmp_path, synthetic_tiny_dir):
  """With a moving average, config.validate_raw_parameters=False saves the raw parameters' pass (one of two)."""
  config = tiny_config(synthetic_tiny_dir)
  config.compilation_cache_dir = ""
  config.ema_decay = 0.9
  passes = {}
  for raw_too in (True, False):
    config.validate_raw_parameters = raw_too
    trainer = train.Trainer(config, str(tmp_path / f"run_{raw_too}"))
    state = trainer._init_state()  # pylint: disable=protected-access
    confusion, calls = trainer.validator.evaluator.confusion, []

    def counted_confusion(*args, _confusion=confusion, _calls=calls, **kwargs):
      _calls.append(True)
      return _confusion(*args, **kwargs)

    trainer.validator.evaluator.confusion = counted_confusion
    scored = trainer.validate(state)
    passes[raw_too] = (len(calls), set(scored))
  assert passes[True] == (2, {"val_loss", "val_accuracy", "raw_val_loss", "raw_val_accuracy"})
  assert passes[False] == (1, {"val_loss", "val_accuracy"})
