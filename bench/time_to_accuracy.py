"""Minutes of training to each validation accuracy, read from a workdir's TensorBoard events.

    python bench/time_to_accuracy.py /work/runs/fer2013_cpu                 # table + minutes to 65%, 68%
    python bench/time_to_accuracy.py WORKDIR --thresholds 0.6,0.65,0.68,0.7

    python bench/time_to_accuracy.py WORKDIR --launch_time "$(date +%s.%N)"  # (taken before the launch)

The clock starts at the run's first event (written when training starts, after
the data and the model are ready) and each row is the wall-clock time at which
that validation finished, so it counts everything the trainer did: steps,
input pipeline, validations and checkpoint saves. A resumed run (several event
files) counts only the time each process was running, not the gaps between.
With --launch_time (UNIX seconds, taken just before the trainer was launched)
the clock starts there instead, so the minutes include start-up (imports,
dataset open, compilation): what "minutes from launch" means in
bench/gpu_check.sh. A threshold never reached says so with the best accuracy
and when; a workdir with no validation yet prints that and exits 1.
Reads the events with tensorboardX's protobuf definitions (no TensorFlow).
"""

from __future__ import annotations

import argparse
import glob
import os
import struct
import sys

VAL_ACCURACY = "val_accuracy"  # fer_jax.checkpointing.VAL_ACCURACY


def read_events(path: str):
  """Yields tensorboardX Event protos from one TFRecord-framed event file."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top

  with open(path, "rb") as f:
    while True:
      header = f.read(12)  # uint64 length, uint32 masked CRC of the length
      if len(header) < 12:
        return
      (length,) = struct.unpack("<Q", header[:8])
      data = f.read(length)
      f.read(4)  # CRC of the data
      if len(data) < length:
        return
      yield event_pb2.Event.FromString(data)


def validation_curve(workdir: str, launch_time: float | None = None) -> list[tuple[int, float, float]]:
  """[(step, minutes of training, val accuracy)] over every event file of the workdir, in time order.

  With `launch_time` (UNIX seconds) the minutes count from it, gaps between resumed processes included.
  """
  files = sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*")), key=os.path.getmtime)
  if not files:
    raise FileNotFoundError(f"no events.out.tfevents.* in {workdir}: is it a training workdir?")
  curve, offset = [], 0.0
  for path in files:
    start = last = None
    for event in read_events(path):
      if not event.wall_time:
        continue
      start = (launch_time if launch_time is not None else event.wall_time) if start is None else start
      last = event.wall_time
      for value in event.summary.value:
        if value.tag == VAL_ACCURACY:
          curve.append((int(event.step), (offset + event.wall_time - start) / 60.0, float(value.simple_value)))
    if start is not None and launch_time is None:
      offset += last - start
  return curve


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("workdir")
  p.add_argument("--thresholds", default="0.65,0.68", help="comma-separated validation accuracies")
  p.add_argument("--launch_time", type=float, default=None,
                 help="UNIX seconds at the trainer's launch: minutes count from there (start-up included)")
  args = p.parse_args(argv)
  thresholds = [float(t) for t in args.thresholds.split(",")]
  try:
    curve = validation_curve(args.workdir, args.launch_time)
  except FileNotFoundError as e:
    curve = []
    print(e)
  clock = "from launch" if args.launch_time is not None else "of training"
  print(f"{'step':>7s} {'minutes':>8s} {'val acc':>8s}   (minutes {clock})")
  for step, minutes, accuracy in curve:
    print(f"{step:7d} {minutes:8.2f} {accuracy:8.4f}")
  best = max(curve, key=lambda row: row[2], default=None)
  for threshold in thresholds:
    reached = [(m, s) for s, m, a in curve if a >= threshold]
    if reached:
      print(f"{threshold * 100:g}%: {reached[0][0]:.2f} min (step {reached[0][1]})")
    else:
      best_so_far = (f" (best {best[2]:.2%} at step {best[0]}, {best[1]:.2f} min; last validation at "
                     f"{curve[-1][1]:.2f} min)" if best else " (no validation was logged)")
      print(f"{threshold * 100:g}%: not reached{best_so_far}")
  return 0 if curve else 1


if __name__ == "__main__":
  sys.exit(main())
