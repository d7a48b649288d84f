"""PyTorch peer worker: time one train step or one inference batch of fer_jax's CNN/VGG.

Measures what a plain PyTorch user gets for the same network: eager mode
(or `--compile` for `torch.compile`), Adam 1e-3 and cross-entropy on one
fixed random batch (images uniform in [0, 1], labels in [0, 7)) kept in
memory on the device, so no input pipeline is timed. Inference is
`model.eval()` under `torch.inference_mode()`.

The architectures mirror fer_jax/models.py (`CNN`, `VGG` with their
defaults) layer for layer and parameter for parameter; only the layout
differs (NCHW here, NHWC there), which changes neither sizes nor cost.

Normally started by bench/train_step.py or bench/inference.py through
`worker_protocol.Worker`, in the peers' interpreter. By hand:

    /work/peers/bin/python bench/peers/torch_worker.py --model cnn --task train
    # wait for READY, then type:  time 20   (prints {"seconds": ...}); quit

`--describe` prints {"params": ..., "output_shape": [...]} and exits.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import worker_protocol  # noqa: E402  (bench/, found through the path above)

NUM_CLASSES = 7
IMAGE_SHAPE = (1, 48, 48)  # C, H, W


def cnn() -> nn.Module:
  """fer_jax.models.CNN: (conv 3x3 + ReLU + 2x2 max-pool + dropout 0.25) x 3, dense 256/128 + dropout 0.5."""
  layers, channels = [], IMAGE_SHAPE[0]
  for features in (32, 64, 128):
    layers += [nn.Conv2d(channels, features, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25)]
    channels = features
  layers.append(nn.Flatten())
  width = channels * (IMAGE_SHAPE[1] // 8) * (IMAGE_SHAPE[2] // 8)
  for features in (256, 128):
    layers += [nn.Linear(width, features), nn.ReLU(), nn.Dropout(0.5)]
    width = features
  layers.append(nn.Linear(width, NUM_CLASSES))
  return nn.Sequential(*layers)


def vgg(stages: tuple[int, ...] = (64, 128, 256, 512), dense: tuple[int, ...] = (1024, 1024),
        batch_norm: bool = True) -> nn.Module:
  """fer_jax.models.VGG: 4 stages of 2 x (conv 3x3 no bias + BN + ReLU) + 2x2 max-pool, dense 1024/1024.

  Without batch_norm each conv takes a bias instead (as fer_jax.models.VGG(batch_norm=False)).
  """
  layers, channels = [], IMAGE_SHAPE[0]
  for features in stages:
    for _ in range(2):
      # flax BatchNorm(momentum=0.9) keeps 0.9 of the old average: torch's momentum=0.1; both eps 1e-5.
      layers += [nn.Conv2d(channels, features, 3, padding=1, bias=not batch_norm)]
      layers += [nn.BatchNorm2d(features, eps=1e-5, momentum=0.1)] if batch_norm else []
      layers += [nn.ReLU()]
      channels = features
    layers.append(nn.MaxPool2d(2))
  layers.append(nn.Flatten())
  width = channels * (IMAGE_SHAPE[1] // 16) * (IMAGE_SHAPE[2] // 16)
  for features in dense:
    layers += [nn.Linear(width, features), nn.ReLU(), nn.Dropout(0.5)]
    width = features
  layers.append(nn.Linear(width, NUM_CLASSES))
  return nn.Sequential(*layers)


def vgg_cpu() -> nn.Module:
  """configs/fer2013_cpu.py's model: the VGG at half width (32-256), no batch norm, one 256-unit dense layer."""
  return vgg((32, 64, 128, 256), (256,), batch_norm=False)


MODELS = {"cnn": cnn, "vgg": vgg, "vgg_cpu": vgg_cpu}


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", choices=sorted(MODELS), default="cnn")
  parser.add_argument("--task", choices=("train", "infer"), default="train")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--compile", action="store_true", help="wrap the model with torch.compile")
  parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="bfloat16: torch.autocast on the device (parameters stay float32)")
  parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (intra-op)")
  parser.add_argument("--describe", action="store_true", help="print parameter count and output shape, exit")
  args = parser.parse_args(argv)

  if args.threads:
    torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  device = torch.device(args.device)
  model = MODELS[args.model]().to(device)
  images = torch.rand(args.batch, *IMAGE_SHAPE, device=device)
  labels = torch.randint(0, NUM_CLASSES, (args.batch,), device=device)

  if args.describe:
    model.eval()
    with torch.inference_mode():
      shape = list(model(images).shape)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(json.dumps({"params": params, "output_shape": shape}), flush=True)
    return

  forward = torch.compile(model) if args.compile else model
  autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if args.dtype == "bfloat16"
              else contextlib.nullcontext())

  if args.task == "train":
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()

    def iteration() -> torch.Tensor:
      optimizer.zero_grad(set_to_none=True)
      with autocast:
        loss = loss_fn(forward(images), labels)
      loss.backward()
      optimizer.step()
      return loss  # no .item(): that would sync every step; `wait` syncs once per block
  else:
    model.eval()

    def iteration() -> torch.Tensor:
      with torch.inference_mode(), autocast:
        return forward(images)

  def wait(_: object) -> None:
    if device.type == "cuda":
      torch.cuda.synchronize()  # on CPU every op has finished when it returns

  worker_protocol.serve(iteration, wait)


if __name__ == "__main__":
  main()
