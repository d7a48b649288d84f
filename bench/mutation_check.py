"""Breaks the code on purpose, one mutation at a time, and checks that the tests meant to catch it fail.

    python bench/mutation_check.py                    # all mutations: killed or survived, then a summary
    python bench/mutation_check.py --list             # names, edits and tests; checks every snippet still matches
    python bench/mutation_check.py --only train_step_gradient_ascent,ten_crop_top_left_thrice
    python bench/mutation_check.py --no-baseline      # when the tests just passed: half the time

All 21 killed in 532 s (baseline 181 s) on 2 cores (AMD EPYC Zen 4, family 25 model 17) shared with other
work (load 7-9); 1068 s (baseline 512 s) at load 10-17.

Each mutation is exact source-text replacements (file, old snippet, new snippet). The tracked and untracked
(not ignored) files of the repository are copied into a temporary folder; there the unmutated tests are run once
(the baseline: every test must pass and none be skipped, else a failure would prove nothing), then, for each
mutation, its snippets are replaced, its tests run (`pytest -x -q NODE_IDS`, in the copy, so the copy's code is
imported) and the files restored. Exit status 0 only when every mutation was killed; a snippet that is not found
exactly once prints `stale` (the code moved on: update the snippet) and fails the run too.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

from mutations import MUTATIONS, Edit, Mutation  # noqa: F401  (bench/mutations.py, the catalogue; Edit for tests)

REPO = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT_S = 900  # per pytest run; a mutation that hangs its tests this long counts as killed (timed out)


def check_snippets(mutation: Mutation, root: pathlib.Path) -> list[str]:
  """Problems with `mutation` in the tree at `root`: snippets not found exactly once, tests that do not exist."""
  problems = []
  for edit in mutation.edits:
    path = root / edit.file
    count = path.read_text().count(edit.old) if path.is_file() else 0
    if count != 1:
      problems.append(f"{edit.file}: old snippet found {count} times, not once: {edit.old!r}")
  for node in mutation.tests:
    file, _, name = node.partition("::")
    function = re.sub(r"\[.*\]$", "", name)
    path = root / file
    if not path.is_file() or not re.search(rf"^def {re.escape(function)}\(", path.read_text(), re.M):
      problems.append(f"test {node} does not exist")
  return problems


def copy_repo(target: pathlib.Path) -> None:
  """The tracked and untracked, not ignored, files of the working tree (uncommitted edits included)."""
  files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         check=True, capture_output=True).stdout.decode().split("\0")
  for rel in filter(None, files):
    source = REPO / rel
    if source.is_file():
      (target / rel).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(source, target / rel)


def run_tests(root: pathlib.Path, tests: list[str], log: pathlib.Path) -> tuple[str, float]:
  """('passed' | 'failed' | 'skipped' | 'error: ...', seconds) of `pytest -x -q tests` in the copy."""
  env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=str(root))
  start = time.monotonic()
  try:
    out = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-rs", "-p", "no:cacheprovider", *tests],
                         cwd=root, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
  except subprocess.TimeoutExpired:
    return f"timed out after {TIMEOUT_S} s", time.monotonic() - start
  seconds = time.monotonic() - start
  log.write_text(out.stdout + out.stderr)
  summary = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
  if out.returncode == 1:
    return "failed", seconds
  if out.returncode == 0:
    return ("skipped" if "skipped" in summary else "passed"), seconds
  return f"error: pytest exit status {out.returncode} ({summary}); see {log}", seconds


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--list", action="store_true", help="list the mutations and check their snippets; run nothing")
  p.add_argument("--only", help="comma-separated mutation names")
  p.add_argument("--keep", action="store_true", help="keep the temporary copy and the pytest logs")
  p.add_argument("--no-baseline", dest="baseline", action="store_false",
                 help="skip the unmutated run (half the time): only when those tests just passed on this tree")
  args = p.parse_args(argv)
  by_name = {m.name: m for m in MUTATIONS}
  chosen = list(MUTATIONS)
  if args.only:
    unknown = [n for n in args.only.split(",") if n not in by_name]
    if unknown:
      p.error(f"unknown mutation(s) {', '.join(unknown)}; --list shows them")
    chosen = [by_name[n] for n in args.only.split(",")]

  stale = {m.name: check_snippets(m, REPO) for m in chosen}
  if args.list:
    for m in chosen:
      print(f"{m.name}: {m.what} [{'stale' if stale[m.name] else 'ok'}]")
      for edit in m.edits:
        print(f"    {edit.file}: {edit.old!r} -> {edit.new!r}")
      for node in m.tests:
        print(f"    test {node}")
      for problem in stale[m.name]:
        print(f"    stale: {problem}")
    print(f"{len(chosen)} mutations, {sum(bool(v) for v in stale.values())} stale")
    return 1 if any(stale.values()) else 0

  start = time.monotonic()
  work = pathlib.Path(tempfile.mkdtemp(prefix="fer_jax_mutation_"))
  root, logs = work / "repo", work / "logs"
  logs.mkdir()
  results: dict[str, str] = {}
  try:
    copy_repo(root)
    runnable = [m for m in chosen if not stale[m.name]]
    for m in chosen:
      if stale[m.name]:
        results[m.name] = "stale"
        print(f"stale     {m.name}: " + "; ".join(stale[m.name]), flush=True)
    baseline_tests = list(dict.fromkeys(t for m in runnable for t in m.tests))
    if baseline_tests and args.baseline:
      outcome, seconds = run_tests(root, baseline_tests, logs / "baseline.log")
      print(f"baseline: {len(baseline_tests)} tests unmutated: {outcome} ({seconds:.0f} s)", flush=True)
      if outcome != "passed":
        print(f"error: the unmutated tests must all pass, none skipped, before a mutation can be judged; see "
              f"{logs / 'baseline.log'}" + ("" if args.keep else " (rerun with --keep to read it)"))
        return 2
    for m in runnable:
      originals = {e.file: (root / e.file).read_text() for e in m.edits}
      try:
        for e in m.edits:
          path = root / e.file
          path.write_text(path.read_text().replace(e.old, e.new, 1))
        outcome, seconds = run_tests(root, list(m.tests), logs / f"{m.name}.log")
      finally:
        for file, text in originals.items():
          (root / file).write_text(text)
      verdict = "killed" if outcome == "failed" or outcome.startswith("timed out") else "survived"
      if outcome.startswith("error") or outcome == "skipped":
        verdict = "error"
      results[m.name] = verdict
      print(f"{verdict:9} {m.name} ({seconds:.0f} s{'' if outcome in ('failed', 'passed') else ', ' + outcome})",
            flush=True)
  finally:
    if args.keep:
      print(f"kept {work}")
    else:
      shutil.rmtree(work, ignore_errors=True)
  counts = {v: sum(r == v for r in results.values()) for v in ("killed", "survived", "stale", "error")}
  print(f"{len(results)} mutations: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n) +
        f" in {time.monotonic() - start:.0f} s")
  return 0 if counts["killed"] == len(results) else 1


if __name__ == "__main__":
  sys.exit(main())
