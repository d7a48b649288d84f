"""FER2013 with the best published single-network recipe (VGG-style, Khaireddin & Chen 2021).

Four conv stages (64/128/256/512, two convs each, batch norm), SGD Nesterov
(momentum 0.9, lr 0.01, weight decay 1e-4), cosine schedule with warmup, heavy
augmentation (rotation, shift, zoom, flip, random 40x40 crop, random erasing),
ten-crop test-time augmentation, long training. What it should reach: about
72-73% PublicTest accuracy; that needs an accelerator (bfloat16 is on for it).
"""

from fer_jax import config_schema


def get_config():
  config = config_schema.base_config()
  config.data.name = "fer2013"
  config.data.num_workers = 4
  config.data.augment.rotation_deg = 10.0
  config.data.augment.shift = 0.2
  config.data.augment.zoom = 0.2
  config.data.augment.hflip = True
  config.data.augment.crop_size = 40
  config.data.augment.erasing_prob = 0.5
  config.model = "vgg"
  config.model_kwargs.stage_features = (64, 128, 256, 512)
  config.model_kwargs.dense_features = (1024, 1024)
  config.model_kwargs.dropout = 0.5
  config.dtype = "bfloat16"
  config.batch_size = 64
  config.eval_batch_size = 512
  config.optimizer = "sgd"
  config.learning_rate = 0.01
  config.momentum = 0.9
  config.nesterov = True
  config.weight_decay = 1e-4
  config.schedule = "warmup_cosine"
  config.warmup_epochs = 2.0
  config.num_epochs = 300.0
  config.log_every_steps = 200
  config.eval_every_steps = 2000
  config.checkpoint_every_steps = 2000
  config.eval.tta = "flip,ten_crop"
  return config
