"""ExpW (96x96 RGB faces cropped from scenes) with a ResNet-18-style network.

Build the data first: `python -m fer_jax.data build expw --config rgb96 --manual_dir DIR`.
AdamW with warmup + cosine, label smoothing, class weights (ExpW is dominated by
neutral and happy). What it should reach: ExpW papers report 70-73% with ResNets;
that takes an accelerator.
"""

from fer_jax import config_schema


def get_config():
  config = config_schema.base_config()
  config.data.name = "expw"
  config.data.config = "rgb96"
  config.data.num_workers = 4
  config.data.augment.rotation_deg = 10.0
  config.data.augment.shift = 0.1
  config.data.augment.zoom = 0.1
  config.data.augment.hflip = True
  config.data.augment.crop_padding = 8
  config.data.augment.erasing_prob = 0.25
  config.model = "resnet"
  config.model_kwargs.stage_sizes = (2, 2, 2, 2)
  config.model_kwargs.stem = "imagenet"
  config.dtype = "bfloat16"
  config.batch_size = 128
  config.optimizer = "adamw"
  config.learning_rate = 1e-3
  config.weight_decay = 0.05
  config.schedule = "warmup_cosine"
  config.warmup_epochs = 2.0
  config.num_epochs = 40.0
  config.label_smoothing = 0.1
  config.class_weights = "balanced"
  config.eval_every_steps = 1000
  config.checkpoint_every_steps = 1000
  config.eval.tta = "flip"
  return config
