"""What the command line says when a run ends, or when it is started again on a workdir that is already finished.

The trainer's final validation goes to WORKDIR/final_metrics.json (orbax keeps no metrics with a checkpoint
here); the evaluation job's report, when there is one, is WORKDIR/eval/<split>/step_<N>/metrics.json.
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any, Mapping

from fer_jax import checkpointing

FINAL_METRICS = "final_metrics.json"


def final_metrics_path(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), FINAL_METRICS)


def record_final(workdir: str, step: int, metrics: Mapping[str, float], split: str) -> None:
  """Writes the last step's metrics (training window and validation on `split`), atomically."""
  path = final_metrics_path(workdir)
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump({"step": step, "validation_split": split, "metrics": {k: float(v) for k, v in metrics.items()}}, f,
              indent=1, sort_keys=True)
  os.replace(tmp, path)


def _read_json(path: str) -> dict[str, Any] | None:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def describe_finished(workdir: str, total_steps: int, eval_split: str) -> list[str]:
  """Lines saying that the run in `workdir` is complete, its final metrics and where they are."""
  lines = [f"This run is already complete: step {total_steps} of {total_steps} is saved in "
           f"{checkpointing.checkpoint_dir(workdir)}. To train again, use a new --workdir."]
  final = _read_json(final_metrics_path(workdir))
  if final and final.get("step") == total_steps:
    m = final.get("metrics", {})
    if checkpointing.VAL_ACCURACY in m:
      lines.append(f"Final validation ({final.get('validation_split')}, step {total_steps}): accuracy "
                   f"{m[checkpointing.VAL_ACCURACY]:.4f}, loss {m.get('val_loss', float('nan')):.4f}; in "
                   f"{final_metrics_path(workdir)}")
  report_path = os.path.join(os.path.abspath(workdir), "eval", eval_split, f"step_{total_steps}", "metrics.json")
  report = _read_json(report_path)
  if report and "plain" in report:
    plain = report["plain"]
    lines.append(f"Evaluation report ({eval_split}, step {total_steps}): accuracy {plain['accuracy']:.4f}, macro F1 "
                 f"{plain['macro_f1']:.4f}; in {report_path}")
  if len(lines) == 1:
    lines.append(f"No final metrics were recorded; `--mode eval` scores the checkpoints into "
                 f"{os.path.dirname(os.path.dirname(report_path))}.")
  return lines


def tensorboard_line(workdir: str) -> str:
  """Where the TensorBoard events are, and how to get TensorBoard when it is not installed."""
  line = f"TensorBoard logs: tensorboard --logdir {os.path.abspath(workdir)}"
  if importlib.util.find_spec("tensorboard") is None:
    line += "  (TensorBoard is not installed: pip install -e '.[tensorboard]')"
  return line
