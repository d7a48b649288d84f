"""absl flag parsing for `python -m fer_jax.main` where every mistake on the command line is one `error:` line.

ml_collections parses `--config` and its `--config.a.b=value` overrides while absl parses the flags, before
main() runs: a misspelt field escapes as a 55-line chain of KeyErrors, and a config file that is not there
only fails when the config is first read, deep inside the trainer. `parse(argv)` goes to app.run's
`flags_parser`.
"""

from __future__ import annotations

import os
import re
import sys
from typing import NoReturn

from absl import flags

FLAGS = flags.FLAGS

_SUGGESTION = re.compile(r'Did you mean "([^"]+)" instead of "([^"]+)"')


def _fail(message: str) -> NoReturn:
  sys.stderr.write(f"error: {message}\n")
  raise SystemExit(1)


def _config_path(argv: list[str]) -> str | None:
  """The value given to --config (either --config=PATH or --config PATH), without a `:argument` suffix."""
  for i, arg in enumerate(argv):
    if arg.startswith(("--config=", "-config=")):
      return arg.split("=", 1)[1].split(":", 1)[0]
    if arg in ("--config", "-config") and i + 1 < len(argv):
      return argv[i + 1].split(":", 1)[0]
  return None


def _missing_config_file(path: str | None, error: BaseException) -> str:
  if path and not os.path.exists(path):
    return (f"--config {path}: no such file (relative paths start in {os.getcwd()}); the recipes are in "
            "configs/, e.g. --config configs/default.py.")
  error = error.__cause__ or error  # ml_collections re-raises the load's error when the config is first read.
  reason = str(error).strip().splitlines()[-1].strip()  # It lists its attempts, the cause last.
  return f"--config {path}: the config file could not be loaded ({reason})."


def _unknown_field(argv: list[str], error: BaseException) -> str:
  """Names the override that failed and the field ml_collections suggests instead, when it has one."""
  text = str(error).replace("\\n", "\n").replace('\\"', '"')
  match = _SUGGESTION.search(text)
  overrides = [a.split("=", 1)[0] for a in argv if a.startswith(("--config.", "-config."))]
  if match:
    suggested, wrong = match.groups()
    culprit = next((o for o in overrides if wrong in o.split(".")), None)
    if culprit:
      fixed = ".".join(suggested if part == wrong else part for part in culprit.split("."))
      return f"{culprit}: the config has no field {wrong!r}. Did you mean {fixed}?"
    return f"the config has no field {wrong!r}. Did you mean {suggested!r}?"
  name = str(error.args[0] if error.args else error).strip("'\"")
  culprit = next((o for o in overrides if name in o.split(".")), " ".join(overrides))
  return (f"{culprit}: the config has no field {name!r}; the fields and what each means are in "
          "fer_jax/config_schema.py (base_config).")


def parse(argv: list[str]) -> list[str]:
  """absl's parse_flags_with_usage, but each mistake is one line and exit status 1, with no traceback.

  A bug in a config file's own code (a config that fails to build) keeps its traceback: it says where.
  """
  try:
    remaining = FLAGS(argv)
  except flags.Error as e:
    message = " ".join(str(e).split()) if "Traceback" not in str(e) else str(e)  # A config file's own bug: keep it.
    _fail(f"{message} (--helpshort lists the flags)")
  except OSError as e:  # The --config file is missing, and overrides tried to read it.
    _fail(_missing_config_file(_config_path(argv), e))
  except (AttributeError, KeyError, IndexError) as e:  # An override names a field the config lacks.
    if not any(a.startswith(("--config.", "-config.")) for a in argv):
      raise  # No override: a bug in the config file's own code, whose traceback says where.
    _fail(_unknown_field(argv, e))
  if FLAGS["config"].present:
    try:
      FLAGS.config.get("seed")  # ml_collections defers a missing file's error until the config is first read.
    except OSError as e:
      _fail(_missing_config_file(_config_path(argv), e))
  return remaining
