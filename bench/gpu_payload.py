"""FER2013's image folders as one file small enough to travel to a GPU machine, and back into folders.

    python bench/gpu_payload.py pack ../shared/data/fer2013 .gpu/fer2013_jpeg.npz
    python bench/gpu_payload.py unpack .gpu/fer2013_jpeg.npz /tmp/fer2013    # train/<class>/*.jpg, test/...

The JPEG files come back byte for byte, so the unpacked folders are the very
files `python -m fer_jax.data build fer2013 --manual_dir` reads here. All
32,298 of them start with the same 328-byte header (quantization and Huffman
tables, up to the start of scan), which is stored once, and their paths as one
UTF-8 text: 41 MB (39 MiB) in all, against 51 MB of files (128 MB on disk), so
the payload, the wheels (11 MiB) and the working tree (7 MiB) fit in one 64 MiB
device call. Used by
bench/gpu_check.sh; the payload is research-only data: keep it out of the
repository (.gpu/ is ignored).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def _header_length(jpeg: np.ndarray) -> int:
  """Bytes up to the end of the start-of-scan segment (what every file of one encoder shares)."""
  data = jpeg.tobytes()
  sos = data.find(b"\xff\xda")
  return 0 if sos < 0 else sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")


def pack(source: str, output: str) -> tuple[int, int]:
  """Stores every *.jpg under `source` (relative paths kept); returns (files, bytes stored)."""
  paths = sorted(os.path.relpath(os.path.join(root, f), source)
                 for root, _, files in os.walk(source) for f in files if f.lower().endswith(".jpg"))
  if not paths:
    raise FileNotFoundError(f"no .jpg files under {source}")
  blobs = [np.fromfile(os.path.join(source, p), np.uint8) for p in paths]
  cut = _header_length(blobs[0])
  header = blobs[0][:cut]
  if not cut or any(len(b) < cut or not np.array_equal(b[:cut], header) for b in blobs):
    header, cut = np.zeros(0, np.uint8), 0  # different encoders: store whole files
  bodies = [b[cut:] for b in blobs]
  offsets = np.cumsum([0] + [len(b) for b in bodies]).astype(np.int64)
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  names = np.frombuffer("\n".join(paths).encode(), np.uint8)  # 1 byte a character (a '<U' array takes 4)
  np.savez(output, header=header, data=np.concatenate(bodies), offsets=offsets, paths=names)
  return len(paths), int(offsets[-1]) + len(header)


def unpack(payload: str, destination: str) -> int:
  """Writes the stored files under `destination`; returns how many."""
  with np.load(payload) as z:
    header, data, offsets, paths = z["header"].tobytes(), z["data"], z["offsets"], z["paths"]
  if paths.dtype == np.uint8:
    paths = paths.tobytes().decode().split("\n")
  for i, path in enumerate(paths):
    target = os.path.join(destination, str(path))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target, "wb") as f:
      f.write(header)
      f.write(data[offsets[i]:offsets[i + 1]].tobytes())
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
