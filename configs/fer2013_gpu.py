"""FER2013 on one GPU in a short wall-clock budget: about 150 epochs in 60-100 s of training on one H200.

NOT MEASURED ON A GPU YET: every choice below is reasoned from the H200 step figures and the CPU ablations
in docs/BENCHMARKS.md, not from a run of this file. Measure it with `bash bench/gpu_check.sh run` (the
device tool; docs/BENCHMARKS.md, GPU); the goal (issue 22) is 72% PublicTest within 120 s of launch.

- Network: `fer2013_vgg.py`'s VGG (64/128/256/512, two convs a stage, dense 1024/1024, dropout 0.5) with
  batch norm, in bfloat16. Its bf16 step was measured on the H200 at about 73,000 images/s at batch 256
  (docs/BENCHMARKS.md, GPU), so width costs little there; it is the published 72.7-73.3% network. Batch norm
  bought nothing on the CPU at 30 epochs and lr 0.05/128 without it, but here it steadies a large-batch,
  high-rate, 150-epoch run, and on the GPU its cost is a few memory-bound passes over 48x48 maps.
- Batch 256, lr 0.04: the batch at which the step and the grain pipeline were measured (60-80k images/s with
  12 workers); the lr is the published 0.01 at batch 64 scaled linearly (0.04 at 256 was also the rate of
  the measured 20-epoch run). At batch 64 the step was overhead-bound (4 ms, 14-18k images/s).
- 150 epochs, SGD Nesterov + 3 warmup epochs + cosine to zero: 16,800 steps; at 60-80k images/s that is
  54-72 s of stepping, plus about 5 s of validations, inside the 60-100 s of training the budget leaves
  after start-up. SGD + cosine beat Adam by 1.5 points in the CPU ablation; a cosine schedule peaks at its
  end, so this run reaches 72% (if it does) in its last epochs. For "70% within 60 s" train a shorter
  schedule: `--config.num_epochs=60` (not measured either).
- Weight decay 5e-4 (the CPU recipe's, 69.2% at 66 epochs) rather than the published 1e-4 for 300 epochs:
  a short schedule with a 10M-parameter network over-fits sooner, and stronger decay is the cheap brake.
- Augmentation: the CPU recipe's geometry (rotation 10 degrees, shift 0.1, zoom 0.15, flips) and random
  erasing at 0.25, standardized inputs. Not the published 40x40 random crop: the trainer's validation then
  scores a centre crop, and ten-crop TTA belongs to the separate evaluation job; erasing and label smoothing
  bought nothing at 30 CPU epochs, so only the milder erasing stays (150 epochs over-fit more than 30) and
  label smoothing is off.
- 12 grain workers (the measured run's, on 16 host cores); validation every 5 epochs (560 steps, 0.2 s each
  once compiled), a checkpoint every 25 epochs, one latest and one best kept: saves stay off the clock.
- The evaluation job adds flip TTA (`--mode eval`), +1.2 points for the CPU recipe.
Build the data first: `python -m fer_jax.data build fer2013 --manual_dir DIR`.
"""

from fer_jax import config_schema


def get_config():
  config = config_schema.base_config()
  config.data.name = "fer2013"
  config.data.num_workers = 12
  config.data.normalization = "standardize"
  config.data.augment.rotation_deg = 10.0
  config.data.augment.shift = 0.1
  config.data.augment.zoom = 0.15
  config.data.augment.hflip = True
  config.data.augment.erasing_prob = 0.25
  config.model = "vgg"
  config.model_kwargs.stage_features = (64, 128, 256, 512)
  config.model_kwargs.convs_per_stage = 2
  config.model_kwargs.dense_features = (1024, 1024)
  config.model_kwargs.dropout = 0.5
  config.model_kwargs.batch_norm = True
  config.dtype = "bfloat16"
  config.batch_size = 256
  config.eval_batch_size = 512
  config.optimizer = "sgd"
  config.learning_rate = 0.04
  config.momentum = 0.9
  config.nesterov = True
  config.weight_decay = 5e-4
  config.schedule = "warmup_cosine"
  config.warmup_epochs = 3.0
  config.label_smoothing = 0.0
  config.num_epochs = 150.0
  config.log_every_steps = 112       # every epoch (112 steps per epoch at batch 256)
  config.eval_every_steps = 560      # every 5 epochs
  config.checkpoint_every_steps = 2800  # every 25 epochs
  config.keep_checkpoints = 1
  config.keep_best_checkpoints = 1
  config.eval.tta = "flip"
  return config
