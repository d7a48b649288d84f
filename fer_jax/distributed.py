"""Multi-process start-up and the few cross-process steps the trainer needs.

`initialize()` joins the processes of a multi-process run (explicit flags or $JAX_* variables, SLURM, Open MPI,
a Cloud TPU VM) into one JAX runtime before anything touches a device. docs/MULTIHOST.md says when each applies
and why only the launching process (never a grain worker) may call it.
"""

from __future__ import annotations

import glob
import json
import multiprocessing
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils


MODES = ("auto", "on", "off")

# PCI ids of Cloud TPU chips (Google vendor 0x1ae0; the same table as jax._src.hardware_utils).
# The vendor id alone is not enough: gVNIC network cards on ordinary GCE VMs share it.
_GOOGLE_PCI_VENDOR = "0x1ae0"
_TPU_PCI_DEVICES = ("0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076")


def _on_cloud_tpu_vm(env: Mapping[str, str]) -> bool:
  """A Cloud TPU VM whose TPU this process may use (JAX_PLATFORMS=cpu opts out)."""
  platforms = env.get("JAX_PLATFORMS", "")
  if platforms and "tpu" not in platforms.lower().split(","):
    return False
  if env.get("TPU_WORKER_HOSTNAMES") or env.get("TPU_PROCESS_ADDRESSES"):  # GKE / queued resources
    return True
  if env.get("TPU_SKIP_MDS_QUERY"):
    return False
  for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
    try:
      if pathlib.Path(vendor).read_text().strip() != _GOOGLE_PCI_VENDOR:
        continue
      if (pathlib.Path(vendor).parent / "device").read_text().strip() in _TPU_PCI_DEVICES:
        return True
    except OSError:
      continue
  return False


def _int_env(env: Mapping[str, str], name: str) -> int | None:
  value = env.get(name)
  if value in (None, ""):
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"${name}={value!r} must be an integer.") from None


def detect(coordinator_address: str | None = None, num_processes: int | None = None,
           process_id: int | None = None, env: Mapping[str, str] | None = None) -> str | None:
  """Why this run is multi-process ('explicit', 'slurm', 'openmpi', 'tpu_vm'), or None if it is not.

  A pure function of the arguments and `env` (default os.environ): testable without a cluster.
  """
  env = os.environ if env is None else env
  if coordinator_address or env.get("JAX_COORDINATOR_ADDRESS") or num_processes is not None \
      or process_id is not None or env.get("JAX_NUM_PROCESSES") or env.get("JAX_PROCESS_ID"):
    return "explicit"
  # The variables jax's SlurmCluster needs: `srun` sets them for each task (not `sbatch` alone).
  if all(v in env for v in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                            "SLURM_LOCALID")) and int(env["SLURM_NTASKS"]) > 1:
    return "slurm"
  if "OMPI_MCA_orte_hnp_uri" in env and int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return "openmpi"
  if _on_cloud_tpu_vm(env):
    return "tpu_vm"
  return None


def initialize(mode: str = "auto", *, coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, local_device_ids: Sequence[int] | None = None,
               timeout_s: int = 300) -> bool:
  """Joins this process to the multi-process JAX runtime when the run is multi-process; returns whether it did.

  Call it once, first thing in main(), before anything touches a device. `timeout_s` bounds the wait for the
  other processes at start-up (JAX then raises instead of hanging).
  """
  if mode not in MODES:
    raise ValueError(f"distributed mode {mode!r} must be one of {MODES}.")
  if multiprocessing.parent_process() is not None:
    raise RuntimeError(
        f"fer_jax.distributed.initialize() called in {multiprocessing.current_process().name}, a child "
        "process (a grain data worker imports the main module). Call it from main() under "
        "`if __name__ == '__main__':`, never at import time.")
  if jax.distributed.is_initialized():
    return True
  env = os.environ
  coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS") or None
  num_processes = num_processes if num_processes is not None else _int_env(env, "JAX_NUM_PROCESSES")
  process_id = process_id if process_id is not None else _int_env(env, "JAX_PROCESS_ID")
  how = detect(coordinator_address, num_processes, process_id, env)
  if mode == "off" or (mode == "auto" and how is None):
    return False
  if how == "explicit" and None in (coordinator_address, num_processes, process_id):
    missing = [name for name, value in (("--coordinator_address", coordinator_address),
                                        ("--num_processes", num_processes), ("--process_id", process_id))
               if value is None]
    raise ValueError(f"A multi-process run outside SLURM, Open MPI or a Cloud TPU VM needs --coordinator_address "
                     f"(host:port of process 0), --num_processes and --process_id on every process; missing "
                     f"{', '.join(missing)} (or $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, $JAX_PROCESS_ID).")
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  if xla_bridge.backends_are_initialized():
    raise RuntimeError("fer_jax.distributed.initialize() must run before anything touches a device "
                       "(jax.devices(), an array, a jit call): call it first in main().")
  # Cross-process collectives on CPU (tests, CPU clusters) go over gloo/TCP; GPUs and TPUs ignore this.
  if jax.config.jax_cpu_collectives_implementation in (None, "none"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, local_device_ids=local_device_ids,
                               initialization_timeout=int(timeout_s))
  except Exception as e:  # JAX's messages do not say what to check on our side.
    raise RuntimeError(
        f"Could not join the multi-process run (detected: {how or 'forced with --distributed=on'}; coordinator "
        f"{coordinator_address or 'auto'}, process {process_id if process_id is not None else 'auto'} of "
        f"{num_processes or 'auto'}): {e}. Check that every process was started with the same coordinator "
        "address and process count, that process 0 is running and its port is reachable, and that no other "
        "job uses the port. Use --distributed=off for a single-process run.") from e
  logging.info("Process %d of %d (%s): %d local / %d global devices (%s).", jax.process_index(),
               jax.process_count(), how or "on", jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform)
  return True


def barrier(name: str) -> None:
  """Waits until every process reaches `name` (no-op for one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
  """Whether `flag` is set on any process (the same answer on every process): a SIGTERM that reached only
  some of them still stops all of them together."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(np.any(multihost_utils.process_allgather(np.bool_(flag))))


def from_process_0(value: Any) -> Any:
  """Process 0's `value` (JSON-serialisable) on every process, so all take the same branch of a loop.

  Decisions read from a shared disk or a clock can differ between processes, and a collective entered by some
  processes and not others hangs.
  """
  if jax.process_count() == 1:
    return value
  data = np.frombuffer(json.dumps(value).encode(), np.uint8) if jax.process_index() == 0 else None
  size = int(multihost_utils.broadcast_one_to_all(np.int32(0 if data is None else data.size)))
  buffer = np.zeros(size, np.uint8) if data is None else data
  return json.loads(np.asarray(multihost_utils.broadcast_one_to_all(buffer)).tobytes())
