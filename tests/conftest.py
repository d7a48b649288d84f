"""Shared pytest fixtures."""

from __future__ import annotations

import os
import pathlib

import pytest

# Session fixtures that several test modules ask for by name: the tiny training run the prediction, export,
# ONNX and bundle tests load (`workdir`, `loaded`, `folder`), and the tiny tfds dataset of the input pipeline
# and record decoding tests (`data_dir`). A module may override a name with a fixture of its own.
pytest_plugins = ("prediction_fixtures", "tiny_dataset")

# The research-only real data lives beside the checkout (../shared/data), never inside it.
REAL_DATA = pathlib.Path(os.environ.get(
    "FER_JAX_REAL_DATA", pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture
def real_data() -> pathlib.Path:
  """Path to ../shared/data; skips the test when it is absent."""
  if not (REAL_DATA / "README.md").exists():
    pytest.skip(f"real data not found at {REAL_DATA}")
  return REAL_DATA


@pytest.fixture(scope="session")
def synthetic_tiny_dir(tmp_path_factory) -> str:
  """A data_dir holding the built-in synthetic_faces 'tiny' config (350/70/70 faces), built once."""
  from fer_jax.data import builders
  path = str(tmp_path_factory.mktemp("tfds_synthetic_tiny"))
  builders.build("synthetic_faces", config="tiny", data_dir=path)
  return path
