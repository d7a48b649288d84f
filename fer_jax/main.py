"""fer_jax command line: train, or run the separate evaluation job.

    python -m fer_jax.main --config configs/default.py --workdir /tmp/fer --mode train_and_eval
    python -m fer_jax.main --config configs/fer2013_cnn.py --workdir runs/cnn --config.batch_size=128
    python -m fer_jax.main --config configs/fer2013_cnn.py --workdir runs/cnn --mode eval
"""

import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from fer_jax import checkpointing, config_schema, distributed, eval_job, flag_parsing, quiet_logs, run_summary, train
from fer_jax.kernels import host_allocator
from fer_jax.data import builders

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "A config file in configs/; override fields with --config.a.b=value.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, TensorBoard events and evaluation reports go.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "train_and_eval"],
                  "train; eval: the evaluation job watching --workdir; train_and_eval: both, one after the other.")
flags.DEFINE_enum("distributed", "auto", list(distributed.MODES),
                  "Multi-process run (one process per TPU VM worker, GPU or node): auto joins when launched by "
                  "SLURM/Open MPI, on a Cloud TPU VM, or given the three flags below; on, off force it.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, the same on every process "
                    "(default $JAX_COORDINATOR_ADDRESS; not needed under SLURM or on TPU VMs).")
flags.DEFINE_integer("num_processes", None, "Processes in the run (default $JAX_NUM_PROCESSES).")
flags.DEFINE_integer("process_id", None, "This process, 0 .. num_processes-1 (default $JAX_PROCESS_ID).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  try:
    run(argv)
  except (config_schema.ConfigError, builders.DatasetNotBuiltError, builders.DatasetDamagedError,
          checkpointing.WorkdirError, checkpointing.DamagedCheckpointError, train.NonFiniteError) as e:
    # What the user fixes (command line, config, data, disk): the message, not a traceback.
    if isinstance(e, checkpointing.DiskFullError):
      _exit_after_failed_save(f"error: {e}")
    raise SystemExit(f"error: {e}") from None


def _exit_after_failed_save(message: str) -> None:
  """Prints `message` and ends the process without interpreter shutdown (the trainer has closed its readers,
  workers and writers by now): tensorstore's threads may still finish the failed save's writes and call back
  into Python, and during shutdown that crashed the interpreter now and then (SIGSEGV after the error line)."""
  print(message, file=sys.stderr)
  logging.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(1)  # pylint: disable=protected-access


def _orbax_log_filter(record) -> bool:
  """Drops orbax's INFO chatter and its tracebacks about a full disk (the trainer says that in one line)."""
  if "/orbax/" not in record.pathname:
    return True
  if record.levelno < 30:
    return False
  error = record.exc_info[1] if record.exc_info else None
  return not (checkpointing.is_disk_full(error) if error else "No space left on device" in record.getMessage())


def _late_tensorstore_callback_hook(unraisable: "sys.UnraisableHookArgs") -> None:
  """Drops one known, harmless error; every other unraisable exception goes to Python's default hook.

  When an asynchronous save fails (a full disk), orbax closes its event loop while some of the
  save's tensorstore writes are still running; as each one ends, tensorstore's thread calls the
  closed loop and prints "RuntimeError: Event loop is closed" with a traceback. The trainer reports
  the failure itself, in one line.
  """
  error = unraisable.exc_value
  if isinstance(error, RuntimeError) and str(error) == "Event loop is closed" and unraisable.object is None:
    logging.debug("A tensorstore write ended after orbax closed its event loop (a failed save).")
    return
  sys.__unraisablehook__(unraisable)


def run(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  quiet_logs.install()  # Before JAX looks for devices (its "no TPU" line).
  host_allocator.keep_freed_memory()  # Before JAX starts its threads (see host_allocator.py).
  # Before anything touches a device; only here, never at import: grain workers import this module.
  distributed.initialize(FLAGS.distributed, coordinator_address=FLAGS.coordinator_address,
                         num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  logging.get_absl_handler().addFilter(_orbax_log_filter)
  sys.unraisablehook = _late_tensorstore_callback_hook
  workdir = os.path.abspath(FLAGS.workdir)
  config = FLAGS.config
  if FLAGS.mode in ("train", "train_and_eval"):
    trainer = train.Trainer(config, workdir)
    metrics = trainer.train()
    if trainer.preempted_at_step is not None:  # SIGTERM: checkpoint saved; exit 0, the rerun resumes.
      print(f"Preempted: saved a checkpoint at step {trainer.preempted_at_step}; run the same command to resume.")
      return
    if trainer.restored_step == trainer.total_steps:  # Nothing left to train: say so, with its results.
      for line in run_summary.describe_finished(workdir, trainer.total_steps, config.eval.split):
        print(line)
    elif jax.process_index() == 0:
      run_summary.record_final(workdir, trainer.total_steps, metrics, config.data.eval_split)
  if FLAGS.mode in ("eval", "train_and_eval"):
    timeout = 0.0 if FLAGS.mode == "train_and_eval" else None
    steps = eval_job.run(config, workdir, idle_timeout_s=timeout)
    out = eval_job.eval_dir(workdir, config.eval.split)
    if steps:
      print(f"Evaluated checkpoint steps {steps}; latest report: {out}/step_{steps[-1]}/metrics.json")
      print(f"Confusion matrix: {out}/step_{steps[-1]}/confusion_matrix.png")
    elif FLAGS.mode == "eval":
      print(f"No new checkpoint to evaluate in {checkpointing.checkpoint_dir(workdir)}; reports are in {out}.")
  print(run_summary.tensorboard_line(workdir))


if __name__ == "__main__":
  app.run(main, flags_parser=flag_parsing.parse)
