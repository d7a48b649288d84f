"""FER2013 on a CPU: the recipe that trains a usable model on a 2-core machine in 40-80 minutes.

A half-width VGG without batch norm (four stages of two biased 3x3 convs, 32/64/128/256 channels,
one 256-unit dense layer with dropout): 1.4M parameters, all stride-1 convolutions, so oneDNN's
kernels carry nearly the whole step. It trains on random 40x40 crops of the 48x48 faces (0.69x the
FLOPs of a whole face: 1.35x the whole-face step) and is validated, chosen and best served on ten crops at
three sizes (the corners and centre of the face resized to 44, 48 and 52, each mirrored: `predict --tta
multi_scale`, 30 passes per face; 1.1-1.3 points above the ten crops of the face as it is). bfloat16
convolutions (oneDNN's avx512_bf16/AMX kernels, fp32 accumulation and master weights); CPUs without bf16
fall back to float32 kernels (one log line says so).
SGD Nesterov with warmup and a cosine decay to zero over 110 epochs, label smoothing, standardized
inputs, geometric augmentation, flips and random erasing, and a moving average of the weights
(decay 0.999, 0.9995 from epoch 60), which validation, checkpoint choice and serving use.
Measured (docs/BENCHMARKS.md), 2 cores of an Intel Xeon with AMX (family 6 model 167; ~1,500 images/s):
seed 1: 68% 19.9 minutes from launch, 70.5% at 33.7, 71.25% at the end (38.5 minutes), the best;
seed 0: 68% at 19.1, 70.5% at 35.9, 70.63% at the end (38.1); seed 2: 19.4, 35.9, 71.05% (38.1).
Before, validated on ten crops of the face as it is every 4 epochs (the same training): on that CPU 69.80%
and 69.99% at best; on 2 Zen 4 cores (AMD EPYC family 25 model 17, ~740 images/s, before oneDNN's weights
were aligned) 68% at 39.8 minutes, 70.58% at best (76.5), 78 minutes. One run moves by 0.6-0.8 points
with the seed or the kernels.
Build the data first: `python -m fer_jax.data build fer2013 --manual_dir DIR`.
"""

from fer_jax import config_schema


def get_config():
  config = config_schema.base_config()
  config.data.name = "fer2013"
  config.data.normalization = "standardize"
  config.data.augment.rotation_deg = 10.0
  config.data.augment.shift = 0.1
  config.data.augment.zoom = 0.15
  config.data.augment.hflip = True
  config.data.augment.erasing_prob = 0.25
  config.data.augment.crop_size = 40   # Random 40x40 crops: 1.4x the step rate; 30 crops at validation
  config.dtype = "bfloat16"           # oneDNN's bf16 convolutions on avx512_bf16/AMX CPUs (1.9x the fp32 step)
  config.model = "vgg"
  config.model_kwargs.stage_features = (32, 64, 128, 256)
  config.model_kwargs.convs_per_stage = 2
  config.model_kwargs.dense_features = (256,)
  config.model_kwargs.dropout = 0.5
  config.model_kwargs.batch_norm = False
  config.batch_size = 128
  config.eval_batch_size = 512
  config.optimizer = "sgd"
  config.learning_rate = 0.05          # 0.03: 70% one validation sooner, 0.2 points lower at the end (3 seeds)
  config.momentum = 0.9
  config.nesterov = True
  config.weight_decay = 5e-4
  config.schedule = "warmup_cosine"
  config.warmup_epochs = 2.0
  config.label_smoothing = 0.1
  config.ema_decay = 0.999             # Average over ~1,000 steps (4.5 epochs)
  config.late_ema_decay = 0.9995       # From epoch 60 (the lower learning rates) over ~2,000 steps
  config.late_ema_from_epoch = 60.0
  config.num_epochs = 110.0            # 38.5 minutes with validations on 2 AMX cores at ~1,500 images/s
  config.validation_view = "multi_scale"  # Validate (and choose the best checkpoint) as the model is best served:
                                         # ten crops at three sizes, 1.1-1.3 points above ten crops at one
  config.validate_raw_parameters = False  # A 30-view pass costs 15 s on 2 AMX cores: score the average only
  config.eval.tta = "ten_crop,multi_scale"  # The evaluation job also scores these, besides the centre crop
  config.log_every_steps = 112
  config.eval_every_steps = 1792   # every 8 epochs (224 steps per epoch at batch 128): 14 validations
  config.checkpoint_every_steps = 1792
  config.keep_checkpoints = 1
  config.keep_best_checkpoints = 1
  return config
