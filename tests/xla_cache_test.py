"""config.compilation_cache_dir: where it points jax's persistent cache, its lock, and the oneDNN runs' init."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from fer_jax import kernels, model_factory, train, xla_cache
from fer_jax.kernels import onednn_conv
from train_test import tiny_config
import jaxpr_checks  # tests/, on pytest's path


@pytest.fixture
def restore_jax_cache():
  before = xla_cache.current_dir()
  yield
  xla_cache.enable(before or "")


def test_auto_is_a_per_user_folder_and_empty_is_off(monkeypatch, tmp_path):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert xla_cache.resolve("auto") == str(tmp_path / "xdg" / "fer_jax" / "xla")
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert xla_cache.resolve("auto") == str(tmp_path / "home" / ".cache" / "fer_jax" / "xla")
  assert xla_cache.resolve("") is None


def test_enable_points_jax_there_with_a_size_limit_and_off_forgets_it(tmp_path, restore_jax_cache):
  pytest.importorskip("filelock")
  path = xla_cache.enable(str(tmp_path / "cache"))
  assert path == str(tmp_path / "cache") and (tmp_path / "cache").is_dir()
  assert jax.config.jax_compilation_cache_dir == path
  # A size limit is what makes jax take its file lock around every read and write (concurrent runs).
  assert jax.config.jax_compilation_cache_max_size == xla_cache.MAX_BYTES
  assert xla_cache.enable("") is None and xla_cache.current_dir() is None


def test_an_unwritable_folder_turns_the_cache_off_instead_of_failing(tmp_path, restore_jax_cache):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  assert xla_cache.enable(str(blocker / "cache")) is None
  assert xla_cache.current_dir() is None


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_onednn_runs_build_the_state_with_flax_kernels_bitwise_equal(tmp_path, synthetic_tiny_dir, dtype,
                                                                    restore_jax_cache):
  """The cacheable init (flax's kernels) gives the parameters oneDNN's init gives, with the training apply_fn;
  the cache is off after it (oneDNN's programs hold this process's addresses), in float32 and bfloat16."""
  if not onednn_conv.available():
    pytest.skip("oneDNN's kernels do not load here")
  if dtype == "bfloat16" and kernels.bf16_conv.unavailable_reason():
    pytest.skip(kernels.bf16_conv.unavailable_reason())
  config = tiny_config(synthetic_tiny_dir)
  config.conv_impl, config.dtype = "onednn", dtype
  config.compilation_cache_dir = str(tmp_path / "cache")
  assert train.bakes_addresses(kernels.select(config))
  trainer = train.Trainer(config, str(tmp_path / "run"))
  assert trainer._cache_after_init == ""  # pylint: disable=protected-access
  assert trainer.startup.cache_scope == "state init only"
  state = trainer._init_state()  # pylint: disable=protected-access
  onednn_setup = model_factory.training_setup(config, trainer.info, kernels.select(config))
  assert jaxpr_checks.onednn_calls(trainer._init_state) == 0  # pylint: disable=protected-access
  assert jaxpr_checks.onednn_calls(onednn_setup.init) > 0  # (the reference does call them)
  reference = jax.jit(onednn_setup.init)()
  assert state.apply_fn == trainer.model.apply
  assert jax.tree.structure(state) == jax.tree.structure(trainer.abstract_state)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(reference), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_the_evaluation_job_compiles_into_the_cache_too(tmp_path, synthetic_tiny_dir, monkeypatch, restore_jax_cache):
  """--mode eval, a process of its own, starts warm on its second run as the trainer does."""
  from fer_jax import eval_job  # pylint: disable=import-outside-toplevel
  config = tiny_config(synthetic_tiny_dir)
  config.compilation_cache_dir = ""
  config.num_train_steps = 4
  train.train_and_evaluate(config, str(tmp_path / "run"))
  monkeypatch.setattr(xla_cache, "MIN_COMPILE_TIME_S", 0.0)  # The tiny eval step compiles in under 0.2 s.
  config.compilation_cache_dir = str(tmp_path / "cache")
  assert eval_job.run(config, str(tmp_path / "run")) == [4]
  assert xla_cache.current_dir() == str(tmp_path / "cache")
  assert any((tmp_path / "cache").iterdir()), "the evaluation job wrote nothing to the compilation cache"
