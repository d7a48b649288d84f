"""Building and reading fer2013 must work where TensorFlow is not installed.

Runs in a fresh interpreter whose import machinery cannot find `tensorflow`
(every `import tensorflow` raises ModuleNotFoundError), so the check holds even
on machines that do have TensorFlow installed. Not `sys.modules['tensorflow'] =
None`: etils decides "TensorFlow is loaded" by `'tensorflow' in sys.modules`,
so that entry makes tfds itself fail to import, which no user without TF sees.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

_SCRIPT = textwrap.dedent("""
    import sys

    probes = []  # tensorflow lookups (etils probes with importlib.util.find_spec: harmless)

    class HideTensorFlow:
      # Wraps a meta path finder so it never finds tensorflow, as if it were not installed.
      def __init__(self, finder):
        self.finder = finder
      def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
          probes.append(name)
          return None
        return self.finder.find_spec(name, path, target)
      def __getattr__(self, attr):
        return getattr(self.finder, attr)

    sys.meta_path[:] = [HideTensorFlow(f) for f in sys.meta_path]
    try:
      import tensorflow
      raise SystemExit("tensorflow is still importable")
    except ModuleNotFoundError:
      pass

    import numpy as np
    import tensorflow_datasets as tfds
    from fer_jax.data import __main__ as data_cli

    manual_dir, data_dir = sys.argv[1:3]
    assert data_cli.main(["build", "fer2013", "--manual_dir", manual_dir, "--data_dir", data_dir]) == 0
    source = tfds.data_source("fer2013", split="train", data_dir=data_dir)
    assert len(source) == 2, len(source)
    by_id = {ex["id"].decode(): ex for ex in (source[0], source[1])}
    np.testing.assert_array_equal(by_id["csv/1"]["image"][..., 0], np.full((48, 48), 7, np.uint8))
    assert int(by_id["csv/1"]["label"]) == 6
    assert tfds.data_source("fer2013", split="validation", data_dir=data_dir)[0]["label"] == 3
    loaded = [m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow.")]
    assert not loaded, loaded
    print("tensorflow lookups:", probes)
    print("NO_TF_OK")
""")


def test_build_and_read_without_tensorflow(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  rows = [(0, 1, "Training"), (6, 7, "Training"), (3, 200, "PublicTest")]
  (manual / "fer2013.csv").write_text("emotion,pixels,Usage\n" + "".join(
      f"{label},{' '.join([str(value)] * 48 * 48)},{usage}\n" for label, value, usage in rows))
  result = subprocess.run([sys.executable, "-c", _SCRIPT, str(manual), str(tmp_path / "data")],
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert "NO_TF_OK" in result.stdout
