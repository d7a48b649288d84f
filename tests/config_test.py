"""Every shipped config loads and validates; bad values fail naming the field."""

import importlib.util
import pathlib

import pytest

from fer_jax import config_schema

CONFIGS = sorted((pathlib.Path(__file__).parents[1] / "configs").glob("*.py"))


def load(path):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_validate(path):
  config = load(path)
  config_schema.validate(config, num_devices=1)
  assert path.read_text().lstrip().startswith('"""'), "each config says what it is for"


@pytest.mark.parametrize("field,value,message", [
    ("optimizer", "adm", "config.optimizer='adm'.*adam, adamw, sgd"),
    ("schedule", "linear", "config.schedule='linear'"),
    ("model", "alexnet", "config.model='alexnet'"),
    ("batch_size", 0, "config.batch_size=0.*> 0"),
    ("batch_size", 30, "config.batch_size=30.*8 devices.*24"),
    ("label_smoothing", 1.5, "label_smoothing"),
    ("mixup_alpha", -0.5, "config.mixup_alpha=-0.5.*>= 0"),
    ("mixup_from_epoch", -1.0, "config.mixup_from_epoch=-1.0.*>= 0"),
    ("late_ema_decay", 1.0, r"config.late_ema_decay=1.0.*\[0, 1\)"),
    ("late_ema_from_epoch", -1.0, "config.late_ema_from_epoch=-1.0.*>= 0"),
    ("learning_rate", float("inf"), "config.learning_rate=inf.*finite"),
    ("weight_decay", float("nan"), "config.weight_decay=nan.*finite"),
])
def test_bad_values_name_the_field(field, value, message):
  config = load(CONFIGS[0])
  config[field] = value
  with pytest.raises(ValueError, match=message):
    config_schema.validate(config, num_devices=8)


def test_ten_crop_needs_a_crop_size():
  config = load(CONFIGS[0])
  config.eval.tta = "flip,ten_crop"
  with pytest.raises(ValueError, match="ten_crop needs data.augment.crop_size"):
    config_schema.validate(config, num_devices=1)
  config.eval.tta = "flop"
  with pytest.raises(ValueError, match="config.eval.tta='flop'"):
    config_schema.validate(config, num_devices=1)


def test_augmentation_off_with_a_crop_size_is_refused():
  config = load(CONFIGS[0].with_name("fer2013_cpu.py"))
  config.data.augment.enabled = False  # the crop goes with it: whole faces in training, crops at validation
  with pytest.raises(ValueError, match="config.data.augment.enabled=False.*crop_size=40.*crop_size=0"):
    config_schema.validate(config, num_devices=1)
  config.data.augment.crop_size = 0
  config.validation_view, config.eval.tta = "plain", "flip"
  config_schema.validate(config, num_devices=1)


def test_validation_view_is_checked():
  config = load(CONFIGS[0])
  config.validation_view = "ten_crop"
  with pytest.raises(ValueError, match="config.validation_view='ten_crop'.*needs data.augment.crop_size"):
    config_schema.validate(config, num_devices=1)
  config.validation_view = "flop"
  with pytest.raises(ValueError, match="config.validation_view='flop'.*one of plain, flip, ten_crop"):
    config_schema.validate(config, num_devices=1)
  config.validation_view = "flip"
  config_schema.validate(config, num_devices=1)


def test_unknown_field_is_rejected():
  config = load(CONFIGS[0])
  with pytest.raises(AttributeError, match="lerning_rate"):
    config.lerning_rate = 1.0
  with pytest.raises(AttributeError, match="rotation"):
    config.data.augment.rotation = 5.0
  config.model_kwargs.conv_features = (8,)  # free-form: depends on the model


def test_non_finite_nested_and_tuple_values_are_refused():
  config = load(CONFIGS[0])
  config.data.augment.erasing_area = (0.02, float("inf"))
  with pytest.raises(ValueError, match="config.data.augment.erasing_area=inf is not allowed: must be a finite"):
    config_schema.validate(config, num_devices=1)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
@pytest.mark.parametrize("model", ["cnn", "vgg", "resnet"])
def test_every_model_on_every_config_runs_or_names_the_fields(path, model):
  """--config.model=X on any config: valid, or one error naming the model_kwargs X does not take."""
  config = load(path)
  config.model = model
  unknown = sorted(set(config.model_kwargs) - set(config_schema.model_fields(model)))
  if not unknown:
    config_schema.validate(config, num_devices=1)
    import jax
    import jax.numpy as jnp
    from fer_jax import models
    net = models.create_model(model, num_classes=7, dtype=jnp.float32, **config.model_kwargs.to_dict())
    shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 48, 48, 1)), train=False))
    assert shapes["params"]
    return
  with pytest.raises(config_schema.ConfigError) as raised:
    config_schema.validate(config, num_devices=1)
  message = str(raised.value)
  assert "\n" not in message and f"model {model!r} does not take" in message
  assert all(field in message for field in unknown)
