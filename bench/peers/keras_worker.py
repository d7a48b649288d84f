"""Keras 3 (TensorFlow backend) peer worker: time one train step or one inference batch of fer_jax's CNN/VGG.

Measures the plain Keras path a user would take: `model.compile(Adam(1e-3),
SparseCategoricalCrossentropy(from_logits=True), jit_compile=...)`, then
`model.train_on_batch(x, y)` per training step and `model.predict_on_batch(x)`
per inference batch, on one fixed random batch (images uniform in [0, 1],
labels in [0, 7)) kept in memory, so no input pipeline is timed. Both calls
hand back NumPy values, so each iteration ends synchronized, as it does for
a Keras user. XLA is off unless `--jit_compile` (on a CPU-only machine Keras's
own default, jit_compile="auto", also leaves it off).

The architectures mirror fer_jax/models.py (`CNN`, `VGG` with their
defaults) layer for layer and parameter for parameter (channels_last, as
fer_jax).

Normally started by bench/train_step.py or bench/inference.py through
`worker_protocol.Worker`, in the peers' interpreter. By hand:

    /work/peers/bin/python bench/peers/keras_worker.py --model cnn --task train
    # wait for READY, then type:  time 20   (prints {"seconds": ...}); quit

`--describe` prints {"params": ..., "output_shape": [...]} and exits.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import worker_protocol  # noqa: E402  (bench/, found through the path above)

NUM_CLASSES = 7
IMAGE_SHAPE = (48, 48, 1)  # H, W, C


def cnn() -> keras.Model:
  """fer_jax.models.CNN: (conv 3x3 + ReLU + 2x2 max-pool + dropout 0.25) x 3, dense 256/128 + dropout 0.5."""
  layers = [keras.Input(IMAGE_SHAPE)]
  for features in (32, 64, 128):
    layers += [keras.layers.Conv2D(features, 3, padding="same", activation="relu"),
               keras.layers.MaxPooling2D(2), keras.layers.Dropout(0.25)]
  layers.append(keras.layers.Flatten())
  for features in (256, 128):
    layers += [keras.layers.Dense(features, activation="relu"), keras.layers.Dropout(0.5)]
  layers.append(keras.layers.Dense(NUM_CLASSES))
  return keras.Sequential(layers, name="cnn")


def vgg(stages: tuple[int, ...] = (64, 128, 256, 512), dense: tuple[int, ...] = (1024, 1024),
        name: str = "vgg", batch_norm: bool = True) -> keras.Model:
  """fer_jax.models.VGG: 4 stages of 2 x (conv 3x3 no bias + BN + ReLU) + 2x2 max-pool, dense 1024/1024.

  Without batch_norm each conv takes a bias instead (as fer_jax.models.VGG(batch_norm=False)).
  """
  layers = [keras.Input(IMAGE_SHAPE)]
  for features in stages:
    for _ in range(2):
      # Keras's momentum is flax's (weight of the old average); epsilon set to flax's 1e-5 (Keras: 1e-3).
      layers += [keras.layers.Conv2D(features, 3, padding="same", use_bias=not batch_norm)]
      layers += [keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)] if batch_norm else []
      layers += [keras.layers.ReLU()]
    layers.append(keras.layers.MaxPooling2D(2))
  layers.append(keras.layers.Flatten())
  for features in dense:
    layers += [keras.layers.Dense(features, activation="relu"), keras.layers.Dropout(0.5)]
  layers.append(keras.layers.Dense(NUM_CLASSES))
  return keras.Sequential(layers, name=name)


def vgg_cpu() -> keras.Model:
  """configs/fer2013_cpu.py's model: the VGG at half width (32-256), no batch norm, one 256-unit dense layer."""
  return vgg((32, 64, 128, 256), (256,), name="vgg_cpu", batch_norm=False)


MODELS = {"cnn": cnn, "vgg": vgg, "vgg_cpu": vgg_cpu}


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", choices=sorted(MODELS), default="cnn")
  parser.add_argument("--task", choices=("train", "infer"), default="train")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--jit_compile", action="store_true", help="compile train/predict functions with XLA")
  parser.add_argument("--threads", type=int, default=None, help="TensorFlow intra-op threads")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="bfloat16: Keras's mixed_bfloat16 policy (bfloat16 compute, float32 variables)")
  parser.add_argument("--describe", action="store_true", help="print parameter count and output shape, exit")
  args = parser.parse_args(argv)

  if args.threads:
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)  # before TF's first op
  keras.utils.set_random_seed(0)
  if args.dtype == "bfloat16":
    keras.mixed_precision.set_global_policy("mixed_bfloat16")  # before the layers are built
  model = MODELS[args.model]()
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(args.batch, *IMAGE_SHAPE)).astype(np.float32)
  labels = rng.integers(0, NUM_CLASSES, size=(args.batch,)).astype(np.int32)

  if args.describe:
    params = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    shape = list(model(images, training=False).shape)
    print(json.dumps({"params": params, "output_shape": shape}), flush=True)
    return

  model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                jit_compile=args.jit_compile)
  if args.task == "train":
    iteration = lambda: model.train_on_batch(images, labels)
  else:
    iteration = lambda: model.predict_on_batch(images)
  worker_protocol.serve(iteration, wait=lambda _: None)  # both calls return NumPy: already synchronized


if __name__ == "__main__":
  main()
