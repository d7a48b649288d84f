"""Times the ExpW build and shows it is bounded by JPEG decoding, not by our code.

    python bench/build_expw.py                       # ../shared/data/expw_sample, both configs
    python bench/build_expw.py --repeat 4 --workers 2  # the sample listed 4 times (symlinks): a longer run

For each config it times, with the same worker processes and the same task chunks:
  decode  read + full-resolution cv2.imdecode of every listed image, nothing else (the floor);
  crop    decode + crop + resize of every face, results shipped to the parent (no tfds);
  build   the real `python -m fer_jax.data build` path into a temporary data_dir;
and prints images/s, faces/s and build/decode. The difference build - crop is the tfds side
(serialising, shuffling and writing ArrayRecord, writing dataset_info) plus label.lst parsing.
Nothing is written outside a temporary folder.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import pathlib
import sys
import tempfile
import time

# Only light imports at module level: the worker fork server preloads this script.
from tfds_builders.expw import crop

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_SAMPLE = REPO.parent / "shared" / "data" / "expw_sample"
CONFIGS = {"gray48": crop.CropParams(48, 1, 0.2), "rgb96": crop.CropParams(96, 3, 0.2)}


def _replicate(manual_dir: pathlib.Path, repeat: int, into: pathlib.Path) -> pathlib.Path:
  """An ExpW layout listing every image `repeat` times under new names (symlinks, no copies)."""
  from tfds_builders.expw import expw  # pylint: disable=g-import-not-at-top
  label_path, image_dir = expw.find_layout(manual_dir)
  (into / "origin").mkdir(parents=True)
  lines = pathlib.Path(label_path).read_text(encoding="utf-8").splitlines()
  out = []
  for k in range(repeat):
    for name in sorted(os.listdir(image_dir)):
      (into / "origin" / f"r{k}_{name}").symlink_to(os.path.join(image_dir, name))
    out += [f"r{k}_{line}" for line in lines if line.strip()]
  (into / "label.lst").write_text("\n".join(out) + "\n", encoding="utf-8")
  return into


def _tasks(manual_dir: pathlib.Path, num_workers: int) -> tuple[list, int, int]:
  """The builder's per-split image chunks, as (mode-less) task lists; plus image and face counts."""
  from tfds_builders.expw import expw  # pylint: disable=g-import-not-at-top
  label_path, image_dir = expw.find_layout(manual_dir)
  with open(label_path, encoding="utf-8") as f:
    faces, _ = crop.parse_label_lines(f, crop.SkipLog())
  by_image: dict[str, list] = {}
  for face in faces:
    by_image.setdefault(face.image_name, []).append(face)
  chunks = []
  for split in crop.SPLITS:
    images = [(os.path.join(image_dir, n), tuple(f.box for f in by_image[n]))
              for n in sorted(by_image) if crop.split_for_image(n) == split]
    chunks.append(crop.chunked(images, crop.chunk_size_for(len(images), num_workers)))
  return chunks, len(by_image), len(faces)


def _warm_page_cache(manual_dir: pathlib.Path) -> None:
  for path in sorted((manual_dir / "origin").iterdir()):
    path.read_bytes()


def _time_pass(mode: str, chunks: list, params: crop.CropParams,
               num_workers: int) -> tuple[float, float, float]:
  """Runs every split's chunks through the builder's worker pool code: (wall, decode CPU, crop CPU)."""
  cpu_decode = cpu_crop = 0.0
  start = time.perf_counter()
  for split_chunks in chunks:
    tasks = ((mode, params, c) for c in split_chunks)
    for results in crop.ordered_map(crop.process_chunk, tasks, min(num_workers, len(split_chunks))):
      for result in results:
        assert result.status == "ok", result
        cpu_decode += result.cpu_decode
        cpu_crop += result.cpu_crop
  return time.perf_counter() - start, cpu_decode, cpu_crop


def _time_build(manual_dir: pathlib.Path, config: str, num_workers: int) -> tuple[float, float]:
  """The real build into a temporary data_dir: (wall, CPU of this parent process)."""
  from fer_jax.data import builders  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory(prefix="expw_bench_") as data_dir:
    start, cpu = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):  # tfds' "Downloading and preparing..." lines
      builder = builders.build("expw", manual_dir=str(manual_dir), config=config, data_dir=data_dir,
                           num_workers=num_workers)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    report = builder.info.metadata["build_report"]
    assert report["complete"] and report["skipped_total"] == 0, report["skipped"]
  return elapsed, cpu


def _best(runs: list[tuple[float, ...]]) -> tuple[float, ...]:
  return min(runs, key=lambda r: r[0])


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--manual_dir", type=pathlib.Path, default=DEFAULT_SAMPLE)
  parser.add_argument("--configs", default="gray48,rgb96")
  parser.add_argument("--workers", type=int, default=crop.find_default_workers())
  parser.add_argument("--repeat", type=int, default=1, help="list the sample this many times (symlinks)")
  parser.add_argument("--trials", type=int, default=1, help="best of N for every timing")
  args = parser.parse_args(argv)
  if not (args.manual_dir / "label.lst").exists():
    print(f"error: no ExpW sample at {args.manual_dir} (expected label.lst and origin/)", file=sys.stderr)
    return 2

  import tensorflow_datasets  # pylint: disable=g-import-not-at-top,unused-import  # not timed
  with tempfile.TemporaryDirectory(prefix="expw_bench_src_") as tmp:
    manual_dir = args.manual_dir
    if args.repeat > 1:
      manual_dir = _replicate(args.manual_dir, args.repeat, pathlib.Path(tmp) / "expw")
    chunks, num_images, num_faces = _tasks(manual_dir, args.workers)
    _warm_page_cache(args.manual_dir)
    start = time.perf_counter()
    list(crop.ordered_map(crop.process_chunk, [("decode", CONFIGS["gray48"], [])], args.workers))
    print(f"{num_images} images, {num_faces} faces, {args.workers} worker(s), cpu_count={os.cpu_count()}; "
          f"first pool start (fork server) {time.perf_counter() - start:.2f} s, not counted below")
    rows = []
    for config in args.configs.split(","):
      params = CONFIGS[config]
      decode = _best([_time_pass("decode", chunks, params, args.workers) for _ in range(args.trials)])
      cropped = _best([_time_pass("crop", chunks, params, args.workers) for _ in range(args.trials)])
      build = _best([_time_build(manual_dir, config, args.workers) for _ in range(args.trials)])
      rows.append((config, decode, cropped, build))
    print("\nwall-clock seconds (same workers, same chunks; best of --trials)")
    print(f"{'config':<8} {'decode':>7} {'crop':>7} {'build':>7} {'images/s':>9} {'faces/s':>8} "
          f"{'crop/decode':>11} {'build/decode':>12}")
    for config, decode, cropped, build in rows:
      print(f"{config:<8} {decode[0]:7.2f} {cropped[0]:7.2f} {build[0]:7.2f} {num_images / build[0]:9.0f} "
            f"{num_faces / build[0]:8.0f} {cropped[0] / decode[0]:11.2f} {build[0] / decode[0]:12.2f}")
    print("\nCPU seconds (insensitive to other load on the machine)")
    print(f"{'config':<8} {'decode (workers)':>17} {'crop+resize (workers)':>22} {'decode share':>13} "
          f"{'parent during build':>20} {'parent ms/face':>15}")
    for config, _, cropped, build in rows:
      share = cropped[1] / (cropped[1] + cropped[2])
      print(f"{config:<8} {cropped[1]:17.2f} {cropped[2]:22.2f} {share:13.0%} "
            f"{build[1]:20.2f} {1000 * build[1] / num_faces:15.2f}")
    print("\ndecode = read + full-resolution cv2.imdecode; crop+resize = our per-face work in the workers\n"
          "(mostly cv2.INTER_AREA); parent = label.lst parsing, result unpickling, tfds serialising,\n"
          "shuffling and ArrayRecord (zstd) writing. The parent overlaps the workers except for tfds'\n"
          "final shuffle-and-write of each split; with many workers it becomes the limit (see README).")
  return 0


if __name__ == "__main__":
  sys.exit(main())
