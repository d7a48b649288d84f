"""Checksums of finalized checkpoint steps, so that a damaged step is named and never used.

Orbax reads a damaged array file without complaint (a flipped byte gives NaNs or wrong weights). So `seal`
writes <step>/checksums.json, the size and SHA-256 of every file under a finalized step, and `verify` checks
them before a step is read (docs/GUARANTEES.md, "Damaged checkpoints").
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time

CHECKSUM_FILE = "checksums.json"
_CHUNK = 1 << 20


class DamagedCheckpointError(Exception):
  """A checkpoint step whose files do not match their checksums (or cannot be read)."""


def describe(error: Exception) -> str:
  """An exception as one line: orbax's messages about a damaged step can run to dozens of lines."""
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0][:300]}" if text else type(error).__name__


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(_CHUNK):
      digest.update(chunk)
  return digest.hexdigest()


def is_sealed(step_dir: str) -> bool:
  return os.path.isfile(os.path.join(step_dir, CHECKSUM_FILE))


def seal(step_dir: str) -> float:
  """Writes step_dir/checksums.json (tmp + rename); returns the seconds it took."""
  start = time.perf_counter()
  entries = {}
  for root, _, files in os.walk(step_dir):
    for name in files:
      path = os.path.join(root, name)
      rel = os.path.relpath(path, step_dir)
      if rel != CHECKSUM_FILE:
        entries[rel] = {"bytes": os.path.getsize(path), "sha256": _sha256(path)}
  # Per thread: the trainer and orbax's finalization thread may seal the same step at once.
  tmp = os.path.join(step_dir, f".{CHECKSUM_FILE}.{os.getpid()}.{threading.get_ident()}.tmp")
  with open(tmp, "w") as f:  # sort_keys: the same file whatever order os.walk lists the files in.
    json.dump({"algorithm": "sha256", "files": entries}, f, indent=1, sort_keys=True)
  os.replace(tmp, os.path.join(step_dir, CHECKSUM_FILE))
  return time.perf_counter() - start


def seal_finalized(checkpoint_root: str) -> list[int]:
  """Seals every finalized step under WORKDIR/checkpoints that has no checksums yet; returns those steps."""
  sealed = []
  if not os.path.isdir(checkpoint_root):
    return sealed
  for name in sorted(os.listdir(checkpoint_root)):
    step_dir = os.path.join(checkpoint_root, name)
    if name.isdigit() and os.path.isdir(step_dir) and not is_sealed(step_dir):
      try:
        seal(step_dir)
        sealed.append(int(name))
      except FileNotFoundError:  # deleted by the retention policy meanwhile
        continue
  return sealed


def verify(step_dir: str) -> float | None:
  """Seconds taken when every file matches, None without checksums; else DamagedCheckpointError naming the file."""
  start = time.perf_counter()
  path = os.path.join(step_dir, CHECKSUM_FILE)
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      entries = json.load(f)["files"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise DamagedCheckpointError(f"{path} is unreadable ({e})") from None
  for rel, expected in sorted(entries.items()):
    file = os.path.join(step_dir, rel)
    if not os.path.isfile(file):
      raise DamagedCheckpointError(f"{file} is missing")
    size = os.path.getsize(file)
    if size != expected["bytes"]:
      raise DamagedCheckpointError(f"{file} is {size} bytes, {expected['bytes']} when saved")
    if _sha256(file) != expected["sha256"]:
      raise DamagedCheckpointError(f"{file} does not match its SHA-256 from when it was saved")
  return time.perf_counter() - start
