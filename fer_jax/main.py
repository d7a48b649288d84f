"""fer_jax command line: train, or run the separate evaluation job.

    python -m fer_jax.main --config configs/default.py --workdir /tmp/fer --mode train_and_eval
    python -m fer_jax.main --config configs/fer2013_cnn.py --workdir runs/cnn --config.batch_size=128
    python -m fer_jax.main --config configs/fer2013_cnn.py --workdir runs/cnn --mode eval
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

from fer_jax import eval_job, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "A config file in configs/; override fields with --config.a.b=value.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, TensorBoard events and evaluation reports go.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "train_and_eval"],
                  "train; eval: the evaluation job watching --workdir; train_and_eval: both, one after the other.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  # Orbax logs every save and restore step at INFO; keep its warnings, drop the chatter.
  logging.get_absl_handler().addFilter(lambda r: "/orbax/" not in r.pathname or r.levelno >= 30)
  workdir = os.path.abspath(FLAGS.workdir)
  if FLAGS.mode in ("train", "train_and_eval"):
    train.train_and_evaluate(FLAGS.config, workdir)
    print(f"TensorBoard logs: tensorboard --logdir {workdir}")
  if FLAGS.mode in ("eval", "train_and_eval"):
    timeout = 0.0 if FLAGS.mode == "train_and_eval" else None
    steps = eval_job.run(FLAGS.config, workdir, idle_timeout_s=timeout)
    out = eval_job.eval_dir(workdir, FLAGS.config.eval.split)
    if steps:
      print(f"Evaluated checkpoint steps {steps}; latest report: {out}/step_{steps[-1]}/metrics.json")
      print(f"Confusion matrix: {out}/step_{steps[-1]}/confusion_matrix.png")
    print(f"TensorBoard logs: tensorboard --logdir {workdir}")


if __name__ == "__main__":
  app.run(main)
