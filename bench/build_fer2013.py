"""Times building fer2013 from a full-size CSV (and from the real image folders when present).

    python bench/build_fer2013.py [--tar]

The full fer2013.csv is 35,887 rows and must build in under a minute on a
2-core machine. The real CSV is not redistributable, so this writes a
full-size stand-in into a temp dir: rows drawn from
../shared/data/fer2013_csv_sample/fer2013.csv when present, else random
pixels, with the real Training/PublicTest/PrivateTest counts. --tar also times
the same CSV inside fer2013.tar.gz, as Kaggle distributes it.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import tarfile
import tempfile
import time

import numpy as np

from fer_jax.data import builders

REAL_DATA = pathlib.Path(os.environ.get(
    "FER_JAX_REAL_DATA", pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"))
USAGE_COUNTS = {"Training": 28709, "PublicTest": 3589, "PrivateTest": 3589}  # the real fer2013.csv


def write_full_csv(path: pathlib.Path, seed: int = 0, fraction: float = 1.0) -> int:
  """Writes a 35,887-row fer2013.csv (times `fraction`) to `path`; returns the number of rows."""
  rng = np.random.default_rng(seed)
  sample = REAL_DATA / "fer2013_csv_sample" / "fer2013.csv"
  if sample.exists():
    rows = [line.split(",")[:2] for line in sample.read_text().splitlines()[1:] if line.strip()]
    print(f"drawing rows from {sample} ({len(rows)} rows)")
  else:
    print(f"{sample} absent: random pixels")
    rows = [[str(rng.integers(7)), " ".join(map(str, rng.integers(0, 256, 48 * 48)))]
            for _ in range(500)]
  counts = {u: max(1, round(n * fraction)) for u, n in USAGE_COUNTS.items()}
  total = sum(counts.values())
  picks = rng.integers(len(rows), size=total)
  usages = [u for u, n in counts.items() for _ in range(n)]
  with open(path, "w") as f:
    f.write("emotion,pixels,Usage\n")
    for i, usage in zip(picks, usages):
      f.write(f"{rows[i][0]},{rows[i][1]},{usage}\n")
  return total


def timed_build(name: str, manual_dir: pathlib.Path, data_dir: pathlib.Path) -> None:
  start = time.perf_counter()
  builder = builders.build("fer2013", manual_dir=str(manual_dir), data_dir=str(data_dir))
  seconds = time.perf_counter() - start
  n = sum(s.num_examples for s in builder.info.splits.values())
  splits = ", ".join(f"{k}={v.num_examples}" for k, v in builder.info.splits.items())
  print(f"RESULT {name}: {n} examples ({splits}) in {seconds:.1f} s = {n / seconds:,.0f} examples/s "
        f"({os.cpu_count()} CPUs)")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--tar", action="store_true", help="also time fer2013.tar.gz")
  parser.add_argument("--fraction", type=float, default=1.0,
                      help="that fraction of the full size (a smoke run: tests/bench_scripts_test.py); below 1 the "
                           "real image folders are not built")
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    (tmp / "csv").mkdir()
    size = "full-size" if args.fraction == 1 else f"{args.fraction:g} x full-size"
    write_full_csv(tmp / "csv" / "fer2013.csv", fraction=args.fraction)
    timed_build(f"{size} fer2013.csv", tmp / "csv", tmp / "data_csv")
    if args.tar:
      (tmp / "tar").mkdir()
      with tarfile.open(tmp / "tar" / "fer2013.tar.gz", "w:gz", compresslevel=6) as tar:
        tar.add(tmp / "csv" / "fer2013.csv", arcname="fer2013/fer2013.csv")
      timed_build(f"{size} fer2013.tar.gz", tmp / "tar", tmp / "data_tar")
    folders = REAL_DATA / "fer2013"
    if folders.exists() and args.fraction == 1:
      timed_build(f"real image folders {folders}", folders, tmp / "data_folders")
    else:
      print(f"{folders} absent or --fraction < 1: skipping the image-folder build")


if __name__ == "__main__":
  main()
