"""fer_jax's side of the side-by-side benchmarks: one training step or one inference call, timed on request.

Run by bench/train_step.py, bench/inference.py and bench/end_to_end.py (see
bench/worker_protocol.py); by hand:

    python bench/fer_jax_worker.py --model cnn --task train     # then type: time 20

--variant picks what is measured, so that each speed-up is measured alone:
  plain      textbook Flax: nn.Conv (XLA's convolutions), nn.max_pool, glibc malloc as it comes
  +malloc    plain, with fer_jax.kernels.host_allocator (no per-step page faults)
  +pool      +malloc, with fer_jax.kernels.pooling.max_pool_2x2
  +im2col    +pool, with fer_jax.kernels.im2col_conv's convolutions
  +dropout   fer_jax.models with im2col convolutions (config.conv_impl=im2col), i.e. +im2col with
             fer_jax.kernels.dropout (fewer random bits per mask)
  fer_jax    what `python -m fer_jax.main` trains: fer_jax.models as model_factory.create_model builds them;
             on a 1-device CPU run that is +dropout with oneDNN's convolutions (fer_jax.kernels.onednn_conv)
--input pipeline (train only) feeds each step from the grain training pipeline
with augmentation (the trainer's own loop) instead of one in-memory batch.

Same step as the trainer (fer_jax.train.train_step: dropout, cross-entropy,
Adam 1e-3), same architectures as bench/peers/*_worker.py.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)
sys.path.insert(0, os.path.dirname(BENCH_DIR))

VARIANTS = ("plain", "+malloc", "+pool", "+im2col", "+dropout", "fer_jax")
MODEL_NAMES = ("cnn", "vgg", "vgg_cpu")  # vgg_cpu: configs/fer2013_cpu.py's network


def fer_jax_model(name: str) -> tuple[str, dict]:
  """(config.model, config.model_kwargs) of a bench model name, as the configs set them."""
  if name == "vgg_cpu":
    from configs import fer2013_cpu  # pylint: disable=g-import-not-at-top
    config = fer2013_cpu.get_config()
    return config.model, config.model_kwargs.to_dict()
  if name == "cnn":
    return "cnn", dict(conv_features=(32, 64, 128), dense_features=(256, 128))
  return name, {}


def textbook_model(name: str, pool, conv=None):
  """The seeds' CNN / the VGG as a Flax user writes them, with a choice of pooling and convolution."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class CNN(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      for features in (32, 64, 128):
        x = pool(nn.relu(nn.Conv(features, (3, 3), padding="SAME", conv_general_dilated=conv)(x)))
        x = nn.Dropout(0.25, deterministic=not train)(x)
      x = x.reshape((x.shape[0], -1))
      for features in (256, 128):
        x = nn.Dropout(0.5, deterministic=not train)(nn.relu(nn.Dense(features)(x)))
      return nn.Dense(7)(x)

  stages, dense = ((32, 64, 128, 256), (256,)) if name == "vgg_cpu" else ((64, 128, 256, 512), (1024, 1024))

  class VGG(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      for features in stages:
        for _ in range(2):
          x = nn.Conv(features, (3, 3), padding="SAME", use_bias=False, conv_general_dilated=conv)(x)
          x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
        x = pool(x)
      x = x.reshape((x.shape[0], -1))
      for features in dense:
        x = nn.Dropout(0.5, deterministic=not train)(nn.relu(nn.Dense(features)(x)))
      return nn.Dense(7)(x)

  return CNN() if name == "cnn" else VGG()


def build_model(name: str, variant: str, dtype: str = "float32", task: str = "train"):
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from fer_jax import config_schema, kernels, model_factory  # pylint: disable=g-import-not-at-top
  from fer_jax.kernels import im2col_conv, pooling
  if variant in ("+dropout", "fer_jax"):
    config = config_schema.base_config()
    config.model, kwargs = fer_jax_model(name)
    config.conv_impl = "im2col" if variant == "+dropout" else "auto"
    config.model_kwargs = ml_collections.ConfigDict(kwargs)
    config.dtype = dtype
    # As the trainer builds it for training; as the evaluation job and predict build it for inference.
    return model_factory.create_model(config, 7, kernels.select(config) if task == "train" else kernels.DEFAULTS)
  ladder = VARIANTS.index(variant)
  pool = pooling.max_pool_2x2 if ladder >= VARIANTS.index("+pool") else (
      lambda x: nn.max_pool(x, (2, 2), strides=(2, 2)))
  conv = im2col_conv.conv_general_dilated if ladder >= VARIANTS.index("+im2col") else None
  return textbook_model(name, pool, conv)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", choices=MODEL_NAMES, default="cnn")
  parser.add_argument("--task", choices=("train", "infer"), default="train")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--variant", choices=VARIANTS, default="fer_jax")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="compute dtype (fer_jax and +dropout variants; parameters stay float32)")
  parser.add_argument("--flops", action="store_true",
                      help="print {\"flops_per_step\": ...} (bench/flop_count.py: the jaxpr's matrix work, and XLA's "
                           "count on the CPU backend) and exit; use --variant plain (XLA's convolutions)")
  parser.add_argument("--input", choices=("memory", "pipeline"), default="memory")
  parser.add_argument("--data_dir", default="/tmp/fer_jax_bench", help="--input pipeline: the bench dataset")
  parser.add_argument("--workers", type=int, default=1, help="--input pipeline: grain worker processes")
  args = parser.parse_args()

  if args.flops:  # XLA:GPU's cost analysis is None (issue 22): count the same shapes on the CPU backend.
    os.environ["JAX_PLATFORMS"] = "cpu"
  if args.variant != "plain":
    from fer_jax.kernels import host_allocator  # pylint: disable=g-import-not-at-top
    host_allocator.keep_freed_memory()
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import worker_protocol  # pylint: disable=g-import-not-at-top
  from fer_jax import model_factory, train  # pylint: disable=g-import-not-at-top

  model = build_model(args.model, args.variant, args.dtype, args.task)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.random((args.batch, 48, 48, 1), np.float32))  # on the device already
  labels = jnp.asarray(rng.integers(0, 7, args.batch), jnp.int32)
  state = model_factory.create_train_state(model, optax.adam(1e-3), (48, 48, 1), seed=0)

  if args.task == "infer":
    variables = model_factory.model_variables(state)
    predict = jax.jit(lambda variables, x: model.apply(variables, x, train=False))
    # Logits back on the host each call, as the peers' predict calls return them.
    worker_protocol.serve(lambda: np.asarray(predict(variables, images)), lambda result: None)
    return

  step = jax.jit(functools.partial(train.train_step, base_key=jax.random.key(0), label_smoothing=0.0,
                                   class_weights=None), donate_argnums=0)
  if args.flops:  # For model FLOPs utilisation: bench/flop_count.py, on the CPU backend (set in main's start)
    import json  # pylint: disable=g-import-not-at-top
    import flop_count  # pylint: disable=g-import-not-at-top  (bench/flop_count.py)
    counts = flop_count.step_flops(step, state, {"image": images, "label": labels})
    # flops_per_step: model FLOPs (the convolutions and matrix products, forward and backward), the MFU convention.
    print(json.dumps({"flops_per_step": counts["matmul"], "xla_flops_per_step": counts["xla"],
                      "backend": jax.default_backend(), "batch": args.batch}), flush=True)
    return
  if args.input == "pipeline":
    import input_pipeline as bench_pipeline  # pylint: disable=g-import-not-at-top  (bench/input_pipeline.py)
    from fer_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    name = bench_pipeline.build_bench_dataset(args.data_dir, 8192, "bytes")
    from fer_jax import config_schema  # pylint: disable=g-import-not-at-top
    config = bench_pipeline.make_config("fer_bench", name, args.data_dir, args.workers, args.batch, augment=True,
                                        cache_max_mb=config_schema.base_config().data.cache_max_mb)  # the trainer's
    from fer_jax import parallel  # pylint: disable=g-import-not-at-top
    batches, mesh = iter(pipeline.create_train_dataset(config)), parallel.create_mesh()
    # As the trainer does: the host batch becomes a (data-sharded) device array, then the step.
    next_batch = lambda: parallel.global_batch({k: v for k, v in next(batches).items() if k in ("image", "label")},
                                               mesh)
  else:
    fixed = {"image": images, "label": labels}
    next_batch = lambda: fixed

  holder = {"state": state}

  def iteration():
    holder["state"], metrics, _ = step(holder["state"], next_batch())
    return metrics

  # The pipeline refills its prefetch buffer while other workers have their turn: settle steps drain that head start.
  worker_protocol.serve(iteration, jax.block_until_ready, settle=8 if args.input == "pipeline" else 0)


if __name__ == "__main__":
  main()
