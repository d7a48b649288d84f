"""Default: the built-in SYNTHETIC faces and a small CNN, end to end in minutes on a laptop CPU.

No download needed: the synthetic_faces dataset is drawn and written on first use.
What it should reach: on a 2-core CPU it builds the data, trains, checkpoints and
evaluates in under 3 minutes, with validation accuracy far above chance (14%).
It checks the machinery, not FER skill: use configs/fer2013_*.py for real faces.
"""

from fer_jax import config_schema


def get_config():
  config = config_schema.base_config()
  config.data.name = "synthetic_faces"
  # Standardized inputs get the network past its initial plateau in ~100 steps
  # instead of ~250; geometric augmentation is off so the run stays short.
  config.data.normalization = "standardize"
  config.data.augment.rotation_deg = 0.0
  config.data.augment.shift = 0.0
  config.data.augment.zoom = 0.0
  config.data.augment.hflip = True
  config.model = "cnn"
  config.model_kwargs.conv_features = (32, 64, 128)
  config.model_kwargs.dense_features = (128,)
  config.model_kwargs.conv_dropout = 0.0
  config.model_kwargs.dense_dropout = 0.3
  config.batch_size = 64
  config.num_train_steps = 600
  config.optimizer = "adam"
  config.learning_rate = 1e-3
  config.log_every_steps = 100
  config.eval_every_steps = 200
  config.checkpoint_every_steps = 300
  config.eval.idle_timeout_s = 30.0
  return config
