"""bench/mutation_check.py stays runnable: its snippets match the code and its tests exist (the run itself is not
part of the suite: it takes minutes)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import mutation_check  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

# The mutations of issue 25's audit: each must stay on the list.
AUDITED = {"train_step_gradient_ascent", "eval_step_confusion_transposed", "ten_crop_top_left_thrice",
           "yunet_smallest_first", "haar_smallest_first", "nonfinite_skip_keeps_new_batch_stats",
           "sigterm_handler_in_any_thread", "sigterm_previous_handler_not_restored", "main_evaluates_after_preemption",
           "checksum_comparison_disabled", "inference_nan_check_removed"}


def test_list_finds_every_snippet_once_and_every_test():
  out = subprocess.run([sys.executable, str(REPO / "bench" / "mutation_check.py"), "--list"], capture_output=True,
                       text=True, timeout=60, cwd=REPO)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
  listed = {line.split(":")[0] for line in out.stdout.splitlines() if line and not line.startswith(" ")}
  assert AUDITED <= listed
  assert out.stdout.strip().splitlines()[-1] == f"{len(mutation_check.MUTATIONS)} mutations, 0 stale"


def test_a_stale_snippet_or_a_missing_test_is_reported():
  real = mutation_check.MUTATIONS[0]
  moved = mutation_check.Mutation("moved", "", (mutation_check.Edit(real.edits[0].file, "no such code", ""),),
                                  real.tests)
  assert mutation_check.check_snippets(real, REPO) == []
  [problem] = mutation_check.check_snippets(moved, REPO)
  assert "old snippet found 0 times" in problem
  gone = mutation_check.Mutation("gone", "", real.edits, ("tests/learning_test.py::test_that_was_renamed",))
  assert mutation_check.check_snippets(gone, REPO) == ["test tests/learning_test.py::test_that_was_renamed does not "
                                                        "exist"]
