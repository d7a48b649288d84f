"""Every training command in the docs parses and validates as written: configs, overrides and shorthands.

The docs name runs as `python -m fer_jax.main --config configs/X.py --config.a=b ...`, as shell variables
(`OLD="..."` in docs/MODEL_CARD.md, "`$WHOLE86` stands for `...`" in docs/BENCHMARKS.md) and as the first cell
of BENCHMARKS' "Every recipe run at a glance" table. Each is loaded the way `fer_jax.main` loads it
(ml_collections' config flag, then config_schema.validate), so a config change that breaks a documented
command fails here, not for the reader who copies it.
"""

from __future__ import annotations

import pathlib
import re
import shlex

import pytest
from absl import flags
from ml_collections import config_flags

from fer_jax import config_schema

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Fields that documented runs used and the code no longer has; the doc says which commit to check out.
REMOVED_FIELDS = {"progressive_sizes", "progressive_until_epochs", "progressive_how"}  # commit 7a19170


def doc_variables(text: str) -> dict[str, str]:
  """NAME -> value: shell assignments `NAME="..."` and prose "`$NAME` stands for `...`"."""
  found = dict(re.findall(r'^\s*([A-Z][A-Z0-9_]*)="([^"]*)"', text, re.M))
  found.update(re.findall(r"`\$([A-Z][A-Z0-9_]*)` stands for `([^`]*)`", text))
  return {name: " ".join(value.split()) for name, value in found.items()}


def main_commands(text: str) -> list[str]:
  """The argument text after `fer_jax.main` of every command line (backslash continuations joined)."""
  text = re.sub(r"\\\n\s*", " ", text)
  commands = []
  for line in text.splitlines():
    for match in re.finditer(r"fer_jax\.main\b([^`|]*)", line):
      commands.append(match.group(1).split("  #")[0])
  return commands


def glance_rows(text: str) -> list[str]:
  """The first cells of "Every recipe run at a glance", `...` expanded to configs/fer2013_cpu.py."""
  section = text.split("### Every recipe run at a glance", 1)[1].split("\n### ", 1)[0]
  cells = re.findall(r"^\| `((?:configs/|\.\.\. )[^`]*)`", section, re.M)
  return [cell.replace("... ", "--config configs/fer2013_cpu.py ", 1) if cell.startswith("... ")
          else "--config " + cell for cell in cells]


def documented_runs() -> list[tuple[str, str]]:
  runs = []
  for doc in DOCS:
    text = doc.read_text()
    variables = doc_variables(text)
    found = main_commands(text) + (glance_rows(text) if "### Every recipe run at a glance" in text else [])
    for command in found:
      expanded = re.sub(r"\$([A-Z][A-Z0-9_]*)", lambda m: variables.get(m.group(1), m.group(0)), command)
      runs.append((f"{doc.name}: {' '.join(command.split())[:90]}", expanded))
  return runs


def config_and_overrides(command: str) -> tuple[str | None, list[str]]:
  tokens = shlex.split(command)
  path = None
  for i, token in enumerate(tokens):
    if token == "--config" and i + 1 < len(tokens):
      path = tokens[i + 1]
    elif token.startswith("--config="):
      path = token.split("=", 1)[1]
  # An override set to a shell variable the doc leaves to the reader (a loop's $DTYPE) keeps the config's value.
  overrides = [t for t in tokens if t.startswith("--config.") and "$" not in t]
  return path, overrides


def load(path: str, overrides: list[str]):
  """What `python -m fer_jax.main --config PATH OVERRIDES` builds before training, validated."""
  argv = ["fer_jax.main", "--config", str(ROOT / path), *overrides]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, lock_config=True, sys_argv=argv)
  flag_values(argv)
  config_schema.validate(flag_values.config, num_devices=1)
  return flag_values.config


RUNS = documented_runs()
pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")  # ml_collections loads configs so


def test_the_docs_name_the_runs_this_test_checks():
  names = [name for name, _ in RUNS]
  assert len(RUNS) >= 40, names
  assert any(name.startswith("MODEL_CARD.md") and "$OLD" in name for name in names)  # the bundled model
  assert sum(name.startswith("BENCHMARKS.md") and "$WHOLE86" in name for name in names) >= 8
  assert any(name.startswith("README.md") and "configs/default.py" in name for name in names)  # the quick start


@pytest.mark.parametrize("name,command", RUNS, ids=[f"{i}" for i in range(len(RUNS))])
def test_documented_command_loads_and_validates(name, command):
  path, overrides = config_and_overrides(command)
  if path is None:
    assert "--mode" in command or command.strip() in ("", "..."), f"{name}: no --config"  # e.g. `--mode eval`
    return
  assert path.startswith("configs/") and (ROOT / path).exists(), f"{name}: {path}"
  removed = [o for o in overrides if o[len("--config."):].split("=")[0] in REMOVED_FIELDS]
  try:
    load(path, [o for o in overrides if o not in removed])
  except (flags.Error, ValueError, KeyError, AttributeError) as e:
    pytest.fail(f"{name}\n  {path} {' '.join(overrides)}\n  -> {e}")


def test_the_bundled_model_command_reproduces_its_recipe():
  """docs/MODEL_CARD.md's `$OLD`: whole faces, float32, no average, 66 epochs, as model.json records."""
  text = (ROOT / "docs" / "MODEL_CARD.md").read_text()
  config = load("configs/fer2013_cpu.py", shlex.split(doc_variables(text)["OLD"]))
  assert (config.dtype, config.ema_decay, config.late_ema_decay, config.num_epochs,
          config.data.augment.crop_size) == ("float32", 0.0, 0.0, 66.0, 0)
