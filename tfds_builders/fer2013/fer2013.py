"""FER2013 (48x48 grey faces, 7 emotions) as a TFDS builder writing ArrayRecord.

Reads what users download by hand (see MANUAL_DOWNLOAD_INSTRUCTIONS): the
original `fer2013.csv`, the `fer2013.tar.gz` that wraps it, or the popular
image-folder redistribution; readers.py parses them. Bad rows and bad files are
skipped, counted by reason and kept in `info.metadata['build_report']`, so a build
never dies on one broken line of a 300 MB file and the user still learns what was
dropped.

Needs no TensorFlow: images are stored as raw uint8 tensors (tfds' `Image`
feature needs TF to encode PNGs) and the default file format is ArrayRecord.
"""

from __future__ import annotations

from collections.abc import Iterator
import os
from typing import Any

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from fer_jax.data.faces import EMOTIONS
from tfds_builders.fer2013.readers import (CSV_NAME, IMAGE_SIZE, KAGGLE_CSV_URL, KAGGLE_FOLDERS_URL, SPLITS,
                                           TAR_NAME, Collected, Fer2013DataError, ManualDataNotFoundError,
                                           find_sources, read_csv, read_folders, read_tar, where_to_get_it)

__all__ = ["Fer2013", "Fer2013DataError", "ManualDataNotFoundError"]

_CITATION = """\
@inproceedings{goodfellow2013challenges,
  title={Challenges in representation learning: A report on three machine learning contests},
  author={Goodfellow, Ian J and Erhan, Dumitru and Carrier, Pierre Luc and Courville, Aaron and
          Mirza, Mehdi and Hamner, Ben and Cukierski, Will and Tang, Yichuan and Thaler, David and
          Lee, Dong-Hyun and others},
  booktitle={International Conference on Neural Information Processing},
  pages={117--124},
  year={2013},
}
"""


class Fer2013(tfds.core.GeneratorBasedBuilder):
  """FER2013 facial expressions from the files users download by hand."""

  name = "fer2013"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "CSV, tar.gz and image-folder layouts; ArrayRecord; build report."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Put ONE of these in manual_dir (directly or one folder down):
  * fer2013.csv or fer2013.tar.gz (the original release; columns emotion,pixels,Usage), from
    Kaggle "challenges-in-representation-learning-facial-expression-recognition-challenge":
    {KAGGLE_CSV_URL}
  * the image folders train/<class>/*.jpg and test/<class>/*.jpg (class folders angry disgust
    fear happy neutral sad surprise), from Kaggle "msambare/fer2013": {KAGGLE_FOLDERS_URL}
FER2013 is research-only data; you must accept its terms on Kaggle yourself.
"""

  # tfds derives code_path via the `importlib_resources` backport, which it only requires on
  # Python < 3.9, so the lookup fails on newer Pythons for builders in an installed package.
  code_path = epath.Path(__file__)

  def __init__(self, *, file_format: str | None = None, **kwargs: Any):
    # ArrayRecord by default: it is random-access and needs no TensorFlow, unlike TFRecord.
    super().__init__(file_format=file_format or "array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=("FER2013: 35,887 48x48 grey face images labelled with one of 7 emotions "
                     "(Goodfellow et al., 2013). Splits follow the original Usage column: "
                     "Training -> train, PublicTest -> validation, PrivateTest -> test."),
        features=tfds.features.FeaturesDict({
            # Raw bytes on disk: ~10x faster to write and half the size of tf.Example int64 lists.
            "image": tfds.features.Tensor(shape=(IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.uint8,
                                          encoding=tfds.features.Encoding.BYTES),
            "label": tfds.features.ClassLabel(names=list(EMOTIONS)),
            "id": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage=KAGGLE_CSV_URL,
        citation=_CITATION,
        metadata=tfds.core.MetadataDict(),
    )

  def _manual_dir(self, dl_manager: tfds.download.DownloadManager) -> str:
    try:
      return os.fspath(dl_manager.manual_dir)
    except AssertionError:
      # tfds asserts when the folder is missing or empty; turn that into our own, actionable error.
      manual_dir = getattr(dl_manager, "_manual_dir", None) or "<manual_dir>"
      raise ManualDataNotFoundError(self._not_found_message(os.fspath(manual_dir))) from None

  @staticmethod
  def _not_found_message(manual_dir: str) -> str:
    state = "does not exist" if not os.path.isdir(manual_dir) else "holds no FER2013 data"
    return (f"FER2013 manual_dir {manual_dir} {state}. Looked there and one folder down for "
            f"{CSV_NAME}, {TAR_NAME}, or image folders train/<class>/ and test/<class>/ "
            f"(class folders {', '.join(sorted(EMOTIONS))}; .jpg/.png). " + where_to_get_it(manual_dir))

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = self._manual_dir(dl_manager)
    sources = find_sources(manual_dir)
    if not sources:
      raise ManualDataNotFoundError(self._not_found_message(manual_dir))
    layout, path = sources[0]
    if len(sources) > 1:
      logging.warning("fer2013: several sources in %s; using %s %s, ignoring %s.", manual_dir,
                      layout, path, [f"{l} {p}" for l, p in sources[1:]])
    out = Collected()
    if layout == "csv":
      with open(path, "rb") as f:
        read_csv(f, path, out)
      provided = list(SPLITS)
    elif layout == "tar_gz":
      read_tar(path, out)
      provided = list(SPLITS)
    else:
      provided = read_folders(path, out)

    counts = {split: len(out.examples[split]) for split in provided}
    skipped = {reason: out.skipped[reason] for reason in sorted(out.skipped)}
    if not any(counts.values()):
      raise Fer2013DataError(
          f"No usable FER2013 examples in {path} ({layout}); skipped {sum(skipped.values())} "
          f"by reason {skipped}, e.g. {out.skipped_ids}. " + where_to_get_it(manual_dir))
    # tfds cannot write a split with no examples, so an empty split is left out and reported.
    self.info.metadata["build_report"] = {
        "layout": layout,
        "source": path,
        "ignored_sources": [{"layout": l, "path": p} for l, p in sources[1:]],
        "splits_provided": provided,
        "empty_splits": [s for s in provided if not counts[s]],
        "written": {s: n for s, n in counts.items() if n},
        "skipped": skipped,
        "skipped_total": sum(skipped.values()),
        "skipped_ids": {r: out.skipped_ids[r] for r in sorted(out.skipped_ids)},
    }
    return {split: self._generate_examples(out.examples[split]) for split in provided if counts[split]}

  def _generate_examples(self, examples: list[tuple[str, int, np.ndarray]]
                         ) -> Iterator[tuple[str, dict[str, Any]]]:
    for example_id, label, image in examples:
      yield example_id, {"image": image, "label": label, "id": example_id}

  def _download_and_prepare(self, dl_manager: tfds.download.DownloadManager,
                            download_config: tfds.download.DownloadConfig) -> None:
    super()._download_and_prepare(dl_manager, download_config)
    report = self.info.metadata.get("build_report")
    if report is None:
      return
    # What the writer actually wrote (differs from what was read only under max_examples_per_split).
    report["written"] = {name: split.num_examples for name, split in self.info.splits.items()}
    written = ", ".join(f"{s}={n}" for s, n in report["written"].items())
    log = logging.warning if report["skipped_total"] or report["empty_splits"] else logging.info
    log("fer2013 build from %s %s: wrote %s; skipped %d %s; empty splits (not written): %s.",
        report["layout"], report["source"], written, report["skipped_total"], report["skipped"],
        report["empty_splits"] or "none")
