"""The trainer learns: a short run on the synthetic faces lowers the loss and beats chance on validation.

Through `Trainer.train()`, the loop every run uses (its jitted train_step, input pipeline and validation),
so a step that climbs the loss instead of descending it, or updates nothing, fails here.
"""

from __future__ import annotations

import math

from fer_jax import train
from train_test import tiny_config

CHANCE = 1 / 7


def test_a_short_run_lowers_the_loss_and_beats_chance_on_validation(tmp_path, synthetic_tiny_dir):
  config = tiny_config(synthetic_tiny_dir)
  # 400 steps of 32 (about 37 epochs of the 350 tiny faces): ~20 s on 2 cores. Chosen so the run gets well
  # past the initial plateau; it reached val_accuracy 0.343 (24 of 70) and val_loss 1.54 when written.
  config.data.normalization = "standardize"
  config.data.augment.enabled = False
  config.model_kwargs.conv_features = (8, 16, 32)
  config.model_kwargs.dense_dropout = 0.0
  config.batch_size = 32
  config.learning_rate = 2e-3
  config.num_train_steps = config.eval_every_steps = config.checkpoint_every_steps = 400
  config.log_every_steps = 100
  trainer = train.Trainer(config, str(tmp_path / "run"))
  before = trainer.validate(trainer._init_state())  # pylint: disable=protected-access
  assert abs(before["val_loss"] - math.log(7)) < 0.1, before  # an untrained network is near uniform

  last = trainer.train()
  # The mean training loss of steps 301-400, and validation after step 400.
  assert last["train_loss"] < before["val_loss"] - 0.2, (before, last)
  assert last["val_loss"] < before["val_loss"] - 0.3, (before, last)
  # 21 of 70 or more: chance is 10 +- 2.9; the run above gets 24.
  assert last["val_accuracy"] >= 0.3 > 2 * CHANCE, last
