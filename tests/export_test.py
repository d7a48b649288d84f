"""The jax.export artifact: same outputs as the checkpoint, any batch size, and a loader without flax."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fer_jax.serving import classifier, export, inference, predict

pytest.importorskip("flatbuffers", reason="jax.export serialization needs the 'flatbuffers' package")

from prediction_fixtures import synthetic_face  # noqa: E402


@pytest.fixture(scope="module")
def artifact(loaded, tmp_path_factory) -> str:
  return export.export_model(loaded, str(tmp_path_factory.mktemp("export") / "model.fer"))


def faces(n: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (n, 48, 48, 1), dtype=np.uint8)


class FlatLinear(nn.Module):
  """The smallest model of crops: one dense layer on the flattened pixels."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.Dense(7)(x.reshape(x.shape[0], -1))


def crop_model(crop_size: int = 40) -> inference.LoadedModel:
  """A LoadedModel trained (here: initialised) on 40x40 crops of 48x48 faces, as the CPU recipe's."""
  model = FlatLinear()
  variables = model.init(jax.random.key(0), jnp.zeros((1, crop_size, crop_size, 1)))
  prep = classifier.Preprocessing(class_names=tuple("abcdefg"), image_shape=(48, 48, 1), crop_size=crop_size,
                                  normalization="standardize", mean=(0.5,), std=(0.25,))
  card = {"config": {"model": "flat_linear", "dtype": "float32"}, "dataset": "synthetic"}
  return inference.LoadedModel(model, variables, prep, card, checkpoint="none", step=0)


def test_multi_scale_exports_with_any_batch_size(tmp_path):
  loaded = crop_model()
  path = export.export_model(loaded, str(tmp_path / "ms.fer"), tta="multi_scale", platforms=["cpu"])
  model = export.load(path)
  for n in (1, 6):
    np.testing.assert_allclose(model(faces(n, seed=n)), loaded.classifier(tta="multi_scale")(faces(n, seed=n)),
                               rtol=1e-5, atol=1e-6)


def test_round_trip_equals_the_checkpoint(loaded, artifact):
  model = export.load(artifact)
  assert sorted(os.listdir(artifact)) == ["exported.bin", "model.json", "params.npz"]
  assert model.class_names == loaded.prep.class_names and model.image_shape == (48, 48, 1)
  assert model.metadata["platforms"] == ["cpu", "cuda", "tpu"] and model.metadata["source"]["step"] == 8
  classifier = loaded.classifier(batch_size=8)
  for n in (1, 3, 8, 13):  # one serialized function, any batch size
    batch = faces(n, seed=n)
    np.testing.assert_allclose(model(batch), classifier(batch), rtol=1e-6, atol=1e-7)


def test_flip_tta_is_baked_in(loaded, tmp_path):
  path = export.export_model(loaded, str(tmp_path / "flip.fer"), tta="flip", platforms=["cpu"])
  model = export.load(path)
  np.testing.assert_allclose(model(faces(5)), loaded.classifier(tta="flip")(faces(5)), rtol=1e-6, atol=1e-7)
  with pytest.raises(export.ExportError, match="exported with tta='flip'"):
    model.classifier(tta="ten_crop")


LOADER = """
import json, sys
import numpy as np
from fer_jax.serving import export
model = export.load(sys.argv[1])
probs = model(np.load(sys.argv[2]))
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("flax", "optax", "orbax", "tensorflow_datasets")
               or m in ("fer_jax.models", "fer_jax.train", "fer_jax.serving.inference"))
print(json.dumps({"probs": probs.tolist(), "heavy": heavy}))
"""


def test_loader_needs_neither_flax_nor_model_code(loaded, artifact, tmp_path):
  batch = faces(4)
  np.save(tmp_path / "faces.npy", batch)
  out = subprocess.run([sys.executable, "-c", LOADER, artifact, str(tmp_path / "faces.npy")],
                       capture_output=True, text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["heavy"] == []
  np.testing.assert_allclose(np.array(result["probs"], np.float32), loaded.classifier()(batch), rtol=1e-6, atol=1e-7)


def test_cli_and_predict_with_the_artifact(workdir, folder, tmp_path, capsys):
  path = str(tmp_path / "cli.fer")
  assert export.main(["--workdir", workdir, "--output", path, "--platforms", "cpu"]) == 0
  assert export.main(["--workdir", workdir, "--output", path]) == 2
  assert "exists: remove it or pass --overwrite" in capsys.readouterr().err
  rows = {}
  for name, source in {"checkpoint": ["--workdir", workdir], "exported": ["--exported", path]}.items():
    rows[name] = tmp_path / f"{name}.csv"
    assert predict.main([*source, str(folder), "--no-detect", "-o", str(rows[name])]) == 0
  assert rows["exported"].read_text() == rows["checkpoint"].read_text()


def test_errors_say_what_to_do(workdir, tmp_path, capsys):
  with pytest.raises(export.ExportError, match="model.json is missing"):
    export.load(str(tmp_path))
  assert export.main(["--workdir", str(tmp_path / "nowhere"), "--output", str(tmp_path / "x.fer")]) == 2
  assert "does not exist" in capsys.readouterr().err
  (tmp_path / "future").mkdir()
  (tmp_path / "future" / "model.json").write_text(json.dumps({"format": export.FORMAT, "format_version": 99}))
  with pytest.raises(export.ExportError, match="version 99"):
    export.load(str(tmp_path / "future"))


def test_an_nvidia_gpu_loads_an_artifact_exported_for_cuda(loaded, artifact, tmp_path, monkeypatch):
  # What jax reports on a CUDA machine: the backend "gpu", the export platform "cuda".
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  monkeypatch.setattr(jax.export, "default_export_platform", lambda: "cuda")
  assert "cuda" in export.load(artifact).exported.platforms
  cpu_only = str(tmp_path / "cpu_only.fer")
  export.export_model(loaded, cpu_only, platforms=("cpu",))
  with pytest.raises(export.ExportError, match=r"exported for \['cpu'\], not for this cuda backend: re-export "
                     "with --platforms cuda"):
    export.load(cpu_only)


def test_preprocessing_travels_with_the_artifact(loaded, artifact):
  prep = inference.Preprocessing.from_json(export.load(artifact).preprocessing)
  assert prep == loaded.prep and prep.normalization == "standardize"
  face = synthetic_face()
  assert np.array_equal(prep.face_pixels(face), loaded.prep.face_pixels(face))


def test_the_bundled_model_exports_by_name_or_by_its_folder(tmp_path, capsys):
  from fer_jax.serving import pretrained
  faces_in = faces(6, seed=2)
  want = pretrained.load().classifier(kernels="xla")(faces_in)
  for args, name in ((["--pretrained"], "named.fer"), (["--workdir", pretrained.bundle_dir()], "folder.fer")):
    path = str(tmp_path / name)
    assert export.main([*args, "--output", path, "--platforms", "cpu"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"export: wrote {path} (") and "step 14112" in err[0]
    model = export.load(path)
    assert model.metadata["source"]["step"] == 14112 and model.class_names[3] == "happy"
    np.testing.assert_allclose(model(faces_in), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("args, message", [
    ([], "give one of --pretrained [NAME] (the bundled model), --workdir or --checkpoint."),
    (["--pretrained", "--step", "3"], "--step and --model_card apply to --workdir and --checkpoint only."),
    (["--pretrained", "nope"], "no bundled model 'nope'"),
])
def test_export_model_options_are_one_error_line(args, message, tmp_path, capsys):
  assert export.main([*args, "--output", str(tmp_path / "x.fer")]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("export: error: ") and message in err[0]
