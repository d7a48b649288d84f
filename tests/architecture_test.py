"""The package layout docs/ARCHITECTURE.md describes: small modules, no import cycles, one trainer entry."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("fer_jax", "tfds_builders")
MAX_MODULE_LINES = 400


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for package in PACKAGES:
    for path in (ROOT / package).rglob("*.py"):
      parts = list(path.relative_to(ROOT).with_suffix("").parts)
      if parts[-1] == "__init__":
        parts.pop()
      out[".".join(parts)] = path
  return out


def _module_level_imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
  """Modules of ours that `name` imports when it is imported (imports inside functions run later)."""
  found = set()
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  for node in ast.parse(path.read_text()).body:
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
      found.add(base)
      found.update(f"{base}.{alias.name}" for alias in node.names)
  ours = set()
  for target in found:
    while target and target not in known:
      target = target.rpartition(".")[0]
    if target and target != name:
      ours.add(target)
  # Importing a.b.c runs a/__init__ and a/b/__init__ first (already running when they are our own parents).
  parents = {".".join(name.split(".")[:i]) for i in range(1, len(name.split(".")))}
  for target in list(ours):
    parts = target.split(".")
    ours.update(".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in known)
  return ours - parents - {name}


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  return {name: _module_level_imports(name, path, set(modules)) for name, path in modules.items()}


def test_no_module_over_the_line_limit():
  """Every Python file of ours: the packages, their tests, configs, benchmarks and launch scripts."""
  folders = (*PACKAGES, "tests", "configs", "bench", "launch")
  paths = [path for folder in folders for path in (ROOT / folder).rglob("*.py")]
  assert len(paths) > 100, f"only {len(paths)} Python files found under {ROOT}"
  long = {str(path.relative_to(ROOT)): n for path in paths
          if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
  assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}; split them by job (docs/ARCHITECTURE.md)"


def test_no_import_cycles():
  graph = _graph()
  state: dict[str, int] = {}
  stack: list[str] = []

  def visit(node: str) -> None:
    state[node] = 1
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 1:
        cycle = stack[stack.index(nxt):] + [nxt]
        raise AssertionError("import cycle: " + " -> ".join(cycle))
      if nxt not in state:
        visit(nxt)
    stack.pop()
    state[node] = 2

  for node in sorted(graph):
    if node not in state:
      visit(node)


def test_tfds_builders_import_only_the_shared_face_code_of_fer_jax():
  graph = _graph()
  used = {t for name, targets in graph.items() if name.startswith("tfds_builders") for t in targets
          if t.startswith("fer_jax")}
  assert used <= {"fer_jax", "fer_jax.data", "fer_jax.data.faces"}, used


def test_only_the_command_line_imports_the_trainer():
  importers = {name for name, targets in _graph().items() if "fer_jax.train" in targets}
  assert importers <= {"fer_jax.main"}, importers


def test_the_cycle_check_finds_a_cycle(tmp_path, monkeypatch):
  fake = {"a": {"b"}, "b": {"c"}, "c": {"a"}}
  monkeypatch.setattr(__import__(__name__), "_graph", lambda: fake)
  try:
    test_no_import_cycles()
  except AssertionError as e:
    assert "a -> b -> c -> a" in str(e)
  else:
    raise AssertionError("the cycle a -> b -> c -> a was not found")
