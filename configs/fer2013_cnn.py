"""FER2013 with the seeds' CNN: conv 32/64/128 (ReLU, 2x2 max-pool, dropout), dense 256/128, softmax 7.

Adam 1e-3, batch 64, light augmentation. What it should reach: at least 55%
PublicTest (validation) accuracy trained on a CPU (see docs/BENCHMARKS.md).
Build the data first: `python -m fer_jax.data build fer2013 --manual_dir DIR`.
"""

from fer_jax import config_schema


def get_config():
  config = config_schema.base_config()
  config.data.name = "fer2013"
  config.data.augment.rotation_deg = 10.0
  config.data.augment.shift = 0.1
  config.data.augment.zoom = 0.1
  config.data.augment.hflip = True
  config.model = "cnn"
  config.model_kwargs.conv_features = (32, 64, 128)
  config.model_kwargs.dense_features = (256, 128)
  config.model_kwargs.conv_dropout = 0.25
  config.model_kwargs.dense_dropout = 0.5
  config.batch_size = 64
  config.optimizer = "adam"
  config.learning_rate = 1e-3
  config.num_epochs = 30.0
  config.log_every_steps = 100
  config.eval_every_steps = 1000
  config.checkpoint_every_steps = 1000
  return config
