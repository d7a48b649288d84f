"""FER2013 on one GPU in a short wall-clock budget: about 150 epochs in 60-100 s of training on one H200.

NOT MEASURED ON A GPU YET: every choice below is reasoned from the H200 step figures and the CPU runs in
docs/BENCHMARKS.md, not from a run of this file. Measure it with `bash bench/gpu_check.sh run` (the device
tool; docs/BENCHMARKS.md, GPU); the goal (issue 22) is 72% PublicTest within 120 s of launch, 70% within 60 s.
On the CPU, this file with only the network halved (32/64/128/256, dense 256) ended at 71.83% after its 150 epochs
(70% first at epoch 120; docs/BENCHMARKS.md, GPU), above every seed of the CPU recipe (70.63-71.25%).

- Network: `fer2013_vgg.py`'s VGG (64/128/256/512, two convs a stage, dense 1024/1024, dropout 0.5) with
  batch norm, in bfloat16. Its bf16 step was measured on the H200 at about 73,000 images/s at batch 256
  (docs/BENCHMARKS.md, GPU), so width costs little there; it is the published 72.7-73.3% network. Batch norm:
  at this batch and rate a half-width stand-in on the CPU ended 0.9 points above the same network without it
  (67.6% against 66.7% at 40 epochs); on the GPU its cost is a few memory-bound passes over small maps.
- What the CPU recipe (`fer2013_cpu.py`, 70.6-71.25% at 110 epochs on a half-width VGG) measured, kept here:
  random 40x40 crops of the 48x48 faces (0.69x the FLOPs a step; ahead of whole faces at equal time on the
  CPU, and the published recipe's crop), validation and best-checkpoint choice on ten crops at three sizes
  (`multi_scale`, 1.1-1.3 points above ten crops of the face as it is) and label smoothing 0.1.
  Not its moving average of the weights: with batch norm the average meets the live batch statistics of the
  raw weights, and a half-width stand-in of this recipe on the CPU (40 epochs; docs/BENCHMARKS.md, GPU) scored
  the average 2.6 points below the raw weights mid-run and level at the end (67.5% against 67.6%).
- Batch 256, lr 0.04: the batch at which the step and the grain pipeline were measured (60-80k images/s with
  12 workers); the lr is the published 0.01 at batch 64 scaled linearly. At batch 64 the step was
  overhead-bound (4 ms, 14-18k images/s).
- 150 epochs, SGD Nesterov + 3 warmup epochs + cosine to zero: 16,800 steps; at 60-80k images/s that is
  54-72 s of stepping, plus 15 validations (an estimated 5-8 s), inside the 60-100 s of training the budget
  leaves after start-up. A cosine schedule peaks at its end, so this run reaches 72% (if it does) in its last
  epochs. For 70% within 60 s, the shorter schedule `--config.num_epochs=60` (gpu_check.sh's section 2).
- Weight decay 5e-4 (the CPU recipe's) rather than the published 1e-4 for 300 epochs: a short schedule with a
  10M-parameter network over-fits sooner, and stronger decay is the cheap brake.
- Augmentation: the CPU recipe's geometry (rotation 10 degrees, shift 0.1, zoom 0.15, flips) and random
  erasing at 0.25, standardized inputs.
- 12 grain workers (the measured run's, on 16 host cores); validation every 10 epochs (a 30-view pass is
  ~30x a plain one's work, an estimated 0.3-0.5 s here), a checkpoint every 50 epochs, one latest and one
  best kept: saves stay off the clock.
- The evaluation job (`--mode eval`) also scores the centre crop and ten crops.
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
  config.data.augment.crop_size = 40
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
  config.label_smoothing = 0.1
  config.num_epochs = 150.0
  config.validation_view = "multi_scale"  # ten crops at three sizes: how the model is best served
  config.log_every_steps = 112       # every epoch (112 steps per epoch at batch 256)
  config.eval_every_steps = 1120     # every 10 epochs
  config.checkpoint_every_steps = 5600  # every 50 epochs (a save is validated too)
  config.keep_checkpoints = 1
  config.keep_best_checkpoints = 1
  config.eval.tta = "ten_crop,multi_scale"
  return config
