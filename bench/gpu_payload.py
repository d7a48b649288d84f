"""FER2013's image folders as one file small enough to travel to a GPU machine, and back into folders.

    python bench/gpu_payload.py pack ../shared/data/fer2013 .gpu/fer2013_jpeg.npz
    python bench/gpu_payload.py unpack .gpu/fer2013_jpeg.npz /tmp/fer2013    # train/<class>/*.jpg, test/...

The JPEG files are stored byte for byte (32,298 files, about 51 MB, against
128 MB on disk as separate files), so the unpacked folders are the very files
`python -m fer_jax.data build fer2013 --manual_dir` reads here. Used by
bench/gpu_check.sh; the payload is research-only data: keep it out of the
repository (.gpu/ is ignored).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def pack(source: str, output: str) -> tuple[int, int]:
  """Stores every *.jpg under `source` (relative paths kept); returns (files, bytes)."""
  paths = sorted(os.path.relpath(os.path.join(root, f), source)
                 for root, _, files in os.walk(source) for f in files if f.lower().endswith(".jpg"))
  if not paths:
    raise FileNotFoundError(f"no .jpg files under {source}")
  blobs = [np.fromfile(os.path.join(source, p), np.uint8) for p in paths]
  offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  np.savez(output, data=np.concatenate(blobs), offsets=offsets, paths=np.array(paths))
  return len(paths), int(offsets[-1])


def unpack(payload: str, destination: str) -> int:
  """Writes the stored files under `destination`; returns how many."""
  with np.load(payload) as z:
    data, offsets, paths = z["data"], z["offsets"], z["paths"]
  for i, path in enumerate(paths):
    target = os.path.join(destination, str(path))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    data[offsets[i]:offsets[i + 1]].tofile(target)
  return len(paths)


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("action", choices=("pack", "unpack"))
  p.add_argument("source")
  p.add_argument("destination")
  args = p.parse_args(argv)
  if args.action == "pack":
    files, size = pack(args.source, args.destination)
    print(f"packed {files} files ({size / 1e6:.1f} MB) into {args.destination}")
  else:
    print(f"unpacked {unpack(args.source, args.destination)} files into {args.destination}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
