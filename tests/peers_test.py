"""The PyTorch and Keras peer workers (bench/peers/) mirror fer_jax's models and speak the worker protocol.

The peers' packages live in their own interpreter, never in fer_jax's venv:
point FER_JAX_PEER_PYTHON at it (e.g. /work/peers/bin/python). Tests whose
package that interpreter cannot import are skipped.
"""

from __future__ import annotations

import functools
import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from fer_jax import models

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import fer_jax_worker  # noqa: E402
import worker_protocol  # noqa: E402

PEER_PYTHON = os.environ.get("FER_JAX_PEER_PYTHON", sys.executable)
WORKERS = {"torch": BENCH / "peers" / "torch_worker.py", "keras": BENCH / "peers" / "keras_worker.py"}
PACKAGES = {"torch": "torch", "keras": "tensorflow"}


@functools.cache
def _importable(package: str) -> bool:
  return subprocess.run([PEER_PYTHON, "-c", f"import {package}"], capture_output=True).returncode == 0


def _require(peer: str) -> None:
  if not _importable(PACKAGES[peer]):
    pytest.skip(f"{PACKAGES[peer]} not importable by {PEER_PYTHON} (set FER_JAX_PEER_PYTHON)")


def _fer_jax_params(name: str) -> int:
  model_name, kwargs = fer_jax_worker.fer_jax_model(name)
  model = models.create_model(model_name, num_classes=7, dtype=jnp.float32, **kwargs)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 48, 48, 1))))
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes["params"]))


@pytest.mark.parametrize("peer", sorted(WORKERS))
@pytest.mark.parametrize("model", fer_jax_worker.MODEL_NAMES)
def test_describe_matches_fer_jax(peer, model):
  _require(peer)
  result = subprocess.run([PEER_PYTHON, str(WORKERS[peer]), "--model", model, "--batch", "2", "--describe"],
                          capture_output=True, text=True, check=True, timeout=300)
  described = json.loads(result.stdout.strip().splitlines()[-1])
  assert described == {"params": _fer_jax_params(model), "output_shape": [2, 7]}


@pytest.mark.parametrize("peer,task", [("torch", "train"), ("torch", "infer"), ("keras", "train"),
                                       ("keras", "infer")])
def test_worker_times_a_block(peer, task):
  _require(peer)
  worker = worker_protocol.Worker(f"{peer}-{task}", [PEER_PYTHON, str(WORKERS[peer]), "--model", "cnn",
                                                     "--task", task, "--batch", "4"],
                                  items_per_iteration=4, start_timeout_s=300)
  try:
    seconds = worker.seconds_per_iteration(2)
  finally:
    worker.close()
  assert isinstance(seconds, float) and seconds > 0
