"""Command line: the facial expression of every face in images, folders and videos.

    python -m fer_jax.predict photo.jpg holiday/ clip.mp4 > faces.csv   # the bundled model (docs/MODEL_CARD.md)
    python -m fer_jax.predict --workdir runs/fer2013_cnn --annotate annotated/ clip.mp4 --output faces.csv

One row per face; an input that fails gives a row with `error` set and the rest go on. Options, output, exit
statuses and the preprocessing: docs/PREDICTION.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import sys
import time
from typing import Callable, Iterator

import cv2
import numpy as np

from fer_jax.model_card import ModelLoadError
from fer_jax.serving import classifier as classifier_lib
from fer_jax.serving import face_detection, smoothing
from fer_jax.serving.predict_inputs import Input, expand_inputs, read_image
from fer_jax.serving.predict_output import AnnotatedVideo, OutputError, RowWriter, check_writable, draw, write_image

NO_FACE = "no face found"
SHOW_WINDOW = "fer_jax predict (q or Esc: stop)"
Box = classifier_lib.Box


@dataclasses.dataclass
class Row:
  """One output line: a classified face, or an input that failed (`error` set)."""
  file: str
  frame: int | None = None
  face: int | None = None
  box: Box | None = None
  label: str | None = None
  probabilities: np.ndarray | None = None
  error: str | None = None


class Predictor:
  """Detects, crops and classifies the faces of images and video frames."""

  def __init__(self, classifier: classifier_lib.BatchedClassifier, detector: Callable[[np.ndarray], list[Box]] | None,
               image_detector: Callable[[np.ndarray], list[Box]] | None = None, *, smooth: int = 1,
               show: bool = False):
    self.classifier = classifier
    self.smooth = smooth  # video and camera frames: mean probabilities over a face's last `smooth` frames
    self.show = show  # draw video and camera frames in a window (q or Esc stops)
    self.detector = detector  # for video frames; None: every image or frame is one face
    self.image_detector = image_detector or detector  # for still images
    self.prep = classifier.prep
    self.last_read = False  # whether the last image() or video() input could be decoded

  def frame(self, image: np.ndarray, detector: Callable[[np.ndarray], list[Box]] | None = None
            ) -> tuple[list[Box], np.ndarray]:
    """Boxes and probabilities [faces, K] of one BGR or grey video frame: the real-time unit of work."""
    detector = detector or self.detector
    boxes = detector(image) if detector is not None else [(0, 0, image.shape[1], image.shape[0])]
    if not boxes:
      return [], np.zeros((0, len(self.prep.class_names)), np.float32)
    return boxes, self.classifier(np.stack([self.prep.face_pixels(image, box) for box in boxes]))

  def rows(self, name: str, frame: int, boxes: list[Box], probs: np.ndarray) -> list[Row]:
    names = self.prep.class_names
    return [Row(name, frame, i, tuple(int(v) for v in box), names[int(np.argmax(p))], p)
            for i, (box, p) in enumerate(zip(boxes, probs))]

  def image(self, path: str, name: str, annotate_to: str | None = None) -> list[Row]:
    """Rows of one image file: its faces, or one row with the error."""
    image, error = read_image(path)
    self.last_read = image is not None
    if image is None:
      return [Row(name, error=error)]
    boxes, probs = self.frame(image, self.image_detector)
    if annotate_to:
      write_image(annotate_to, draw(image, boxes, probs, self.prep.class_names))
    if not boxes:
      return [Row(name, frame=0, error=NO_FACE)]
    return self.rows(name, 0, boxes, probs)

  def video(self, path: str | int, name: str, annotate_to: str | None = None) -> Iterator[Row]:
    """Rows of every frame's faces as frames come (none for a frame without faces), or one row with the error.

    `path` is a video file, a stream URL or a camera index (an OpenCV capture device).
    """
    capture = cv2.VideoCapture(path)
    writer, index, with_faces, finished = None, 0, 0, False
    try:
      ok, image = capture.read() if capture.isOpened() else (False, None)
      self.last_read = bool(ok)
      if not ok:
        yield Row(name, error=f"cannot read camera {path}" if isinstance(path, int) else
                  "cannot read video (not a video, or this OpenCV has no decoder for it)")
        return
      if annotate_to:
        writer = AnnotatedVideo(annotate_to, capture.get(cv2.CAP_PROP_FPS), (image.shape[1], image.shape[0]))
      smoother = smoothing.FaceSmoother(self.smooth) if self.smooth > 1 else None
      while ok:
        boxes, probs = self.frame(image)
        if smoother is not None:
          probs = smoother(boxes, probs)
        with_faces += bool(boxes)
        if writer is not None or self.show:
          annotated = draw(image, boxes, probs, self.prep.class_names)
          if writer is not None:
            writer.write(annotated)
          if self.show:
            cv2.imshow(SHOW_WINDOW, annotated)
            if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
              break
        yield from self.rows(name, index, boxes, probs)
        index += 1
        ok, image = capture.read()
      finished = True
    finally:
      capture.release()
      if writer is not None:
        writer.close(commit=finished)
    if not with_faces:
      yield Row(name, error=f"{NO_FACE} in any of the {index} frames")


class _OneLineErrors(argparse.ArgumentParser):
  """A bad option is one line on stderr and exit status 2, like every other start-up error (no usage dump)."""

  def error(self, message: str) -> None:
    self.exit(2, f"predict: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
  p = _OneLineErrors(
      prog="python -m fer_jax.predict", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="Exit status: 0 some input read; 1 no input could be read; 2 model, detector, arguments or an "
             "unwritable destination; 3 an output write failed midway (no partial file is left).")
  src = p.add_argument_group("model (at most one; default: the bundled fer2013_cpu model)")
  src.add_argument("--pretrained", metavar="NAME", help="a model bundled with fer_jax (fer_jax/serving/weights/NAME)")
  src.add_argument("--workdir", help="training workdir: WORKDIR/model.json and the latest checkpoint (or --step)")
  src.add_argument("--checkpoint", help="one step directory, WORKDIR/checkpoints/<step>")
  src.add_argument("--exported", help="an artifact of python -m fer_jax.export (no flax needed)")
  p.add_argument("--step", type=int, help="with --workdir: this step instead of the latest")
  p.add_argument("--model_card", help="model.json to use instead of the workdir's")
  p.add_argument("inputs", nargs="*", metavar="INPUT", help="image or video files, or folders (recursive)")
  live = p.add_argument_group("video and camera")
  live.add_argument("--camera", metavar="N", help="read OpenCV capture device N (0: the default webcam; a video "
                    "file or stream URL also works); rows are written as frames come, Ctrl+C stops")
  live.add_argument("--show", action="store_true", help="draw boxes and labels in a window (needs a display)")
  live.add_argument("--smooth", type=int, default=1, metavar="K",
                    help="mean each face's probabilities over its last K frames (faces followed by box overlap)")
  p.add_argument("--output", "-o", help="write rows here instead of stdout")
  p.add_argument("--format", choices=("csv", "jsonl"), default="csv")
  p.add_argument("--annotate", metavar="OUT_DIR", help="write copies with boxes and labels drawn (videos as mp4)")
  p.add_argument("--no-detect", "--no_detect", dest="no_detect", action="store_true",
                 help="each image or frame is already one face crop: no detection")
  p.add_argument("--tta", default="none", help="test-time augmentation, as the evaluation job's views: none, "
                 "flip (the mean softmax of the face and its mirror image), or for models trained on crops "
                 "ten_crop (corners and centre, each mirrored) or multi_scale (ten crops at three sizes)")
  p.add_argument("--batch_size", type=int, default=32, help="most faces per compiled call (a power of two)")
  p.add_argument("--margin", type=float, help="fraction of the detected box added on each side "
                 "(default: what reproduces the training crops, see docs/PREDICTION.md)")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), help="compute dtype instead of the config's")
  p.add_argument("--kernels", choices=("auto", "onednn", "xla"), default="auto",
                 help="convolutions: auto (oneDNN's on a CPU where they load, else XLA's), onednn or xla")
  det = p.add_argument_group("face detector")
  det.add_argument("--detector", choices=face_detection.DETECTORS, default=None,
                   help="yunet (default; falls back to haar when its package is missing) or haar (OpenCV's cascade)")
  det.add_argument("--detect_size", type=int,
                   help="longer side searched for faces, in pixels (0 = full size; default: yunet 320; haar: video "
                   "frames 320, images their own size within 320..960)")
  det.add_argument("--min_score", type=float, default=0.8, help="yunet: the least confidence of a face, in [0, 1]")
  det.add_argument("--min_face", type=float, default=0.0,
                   help="smallest face as a fraction of the searched image's shorter side")
  det.add_argument("--scale_factor", type=float,
                   help="haar: cascade pyramid step (default: 1.2 for video frames, 1.1 for images)")
  det.add_argument("--min_neighbors", type=int, default=5, help="haar: cascade votes a face needs")
  det.add_argument("--cascade", help="haar: a cascade XML file instead of OpenCV's frontal-face default")
  return p


def load_classifier(args: argparse.Namespace) -> classifier_lib.BatchedClassifier:
  """The classifier the arguments name; ModelLoadError when it cannot be loaded (an .onnx file needs no jax)."""
  if sum(x is not None for x in (args.pretrained, args.workdir, args.checkpoint, args.exported)) > 1:
    raise ModelLoadError("give at most one of --pretrained, --workdir, --checkpoint or --exported.")
  if args.exported is not None:
    if args.dtype or args.step is not None or args.model_card or args.kernels != "auto":
      raise ModelLoadError("--dtype, --step, --model_card and --kernels do not apply to --exported artifacts.")
    if args.exported.endswith(".onnx"):
      from fer_jax.serving import onnx_model as artifact  # pylint: disable=g-import-not-at-top
    else:
      from fer_jax.serving import export as artifact  # pylint: disable=g-import-not-at-top
    return artifact.load(args.exported).classifier(batch_size=args.batch_size, tta=args.tta, margin=args.margin)
  if args.workdir is None and args.checkpoint is None:
    if args.step is not None or args.model_card:
      raise ModelLoadError("--step and --model_card apply to --workdir and --checkpoint only.")
    from fer_jax.serving import pretrained  # pylint: disable=g-import-not-at-top  (jax: only when needed)
    loaded = pretrained.load(args.pretrained or pretrained.DEFAULT, margin=args.margin, dtype=args.dtype)
  else:
    from fer_jax.serving import inference  # pylint: disable=g-import-not-at-top
    loaded = inference.load(args.workdir, checkpoint=args.checkpoint, step=args.step, model_card=args.model_card,
                            margin=args.margin, dtype=args.dtype)
  return loaded.classifier(batch_size=args.batch_size, tta=args.tta, kernels=args.kernels)


def check_options(args: argparse.Namespace) -> None:
  """ValueError naming the option, before any model or detector is loaded."""
  if args.margin is not None and not (math.isfinite(args.margin) and 0 <= args.margin <= 2):
    raise ValueError(f"--margin {args.margin} must be a fraction of the box side in [0, 2].")
  if args.batch_size < 1 or args.batch_size & (args.batch_size - 1):
    raise ValueError(f"--batch_size {args.batch_size} must be a power of two (1, 2, 4, ... 32, 64).")
  if args.min_neighbors < 0:
    raise ValueError(f"--min_neighbors {args.min_neighbors} must be >= 0.")
  if not args.inputs and args.camera is None:
    raise ValueError("give INPUT files or folders, or --camera N.")
  if args.smooth < 1:
    raise ValueError(f"--smooth {args.smooth} must be >= 1 (1: no smoothing).")
  if args.show:
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
      raise ValueError("--show needs a display, and neither $DISPLAY nor $WAYLAND_DISPLAY is set.")
    try:
      cv2.namedWindow(SHOW_WINDOW)
    except cv2.error as e:
      raise ValueError("--show: this OpenCV cannot open windows (opencv-python-headless has no GUI; "
                       f"`pip install opencv-python` has one): {str(e).strip().splitlines()[-1]}") from None


def create_detectors(args: argparse.Namespace, say: Callable[[str], None]) -> list[Callable[[np.ndarray], list[Box]]]:
  """[video-frame detector, still-image detector] of --detector; YuNet falls back to Haar unless asked for."""
  name = args.detector or "yunet"
  if name == "yunet" and (args.cascade or args.scale_factor):
    raise ValueError("--cascade and --scale_factor are Haar cascade settings: add --detector haar.")
  haar = {"cascade": args.cascade, "min_neighbors": args.min_neighbors, "scale_factor": args.scale_factor}
  make = lambda name: [face_detection.create(name, video=video, detect_size=args.detect_size, min_face=args.min_face,
                                             min_score=args.min_score, **haar) for video in (True, False)]
  try:
    return make(name)
  except face_detection.DetectorUnavailableError as e:
    if args.detector is not None:
      raise
    say(f"note: {e} Using the Haar cascade instead.")
    return make("haar")


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  logging.getLogger("absl").setLevel(logging.ERROR)  # orbax logs every restore; stderr is for per-input lines
  say = lambda message: print(f"predict: {message}", file=sys.stderr, flush=True)
  try:
    check_options(args)
    if args.output:
      check_writable(args.output, "--output")
    if args.annotate:
      check_writable(args.annotate, "--annotate", folder=True)
    detectors = [None, None] if args.no_detect else create_detectors(args, say)
    classifier = load_classifier(args)
    writer = RowWriter(args.output, args.format, classifier.class_names)
  except (ModelLoadError, face_detection.DetectorUnavailableError, OutputError, ValueError) as e:
    say(f"error: {e}")
    return 2
  predictor = Predictor(classifier, *detectors, smooth=args.smooth, show=args.show)
  start = time.perf_counter()
  read = faces = errors = 0
  camera = [] if args.camera is None else [
      Input("camera", int(args.camera) if args.camera.isdigit() else args.camera, f"camera:{args.camera}", "camera")]
  try:
    for item in [*camera, *expand_inputs(args.inputs)]:
      target = os.path.join(args.annotate, item.annotate_name) if args.annotate else None
      if item.kind == "error":
        rows = [Row(item.name, error=item.error)]
      elif item.kind == "image":
        rows = predictor.image(item.path, item.name, target)
      else:
        rows = predictor.video(item.path, item.name, target and os.path.splitext(target)[0] + ".mp4")
      for count, row in enumerate(rows, 1):
        writer.write(row)
        if row.error is None:
          faces += 1
        else:
          errors += 1
          say(f"{row.file}: {row.error}")
        if item.kind == "camera" or count % 256 == 0:
          writer.flush()  # a camera's rows reach the file or pipe as its frames come; long videos stream
      if item.kind != "error":
        read += predictor.last_read
      writer.flush()
    writer.close(commit=True)
  except OutputError as e:
    writer.close(commit=False)
    say(f"error: {e}; stopped, and no partial file was left.")
    return 3
  except KeyboardInterrupt:  # Ctrl+C ends a camera session: keep the rows so far.
    writer.close(commit=True)
    read += predictor.last_read
    say("stopped (Ctrl+C).")
  except BaseException:
    writer.close(commit=False)
    raise
  finally:
    if args.show:
      cv2.destroyAllWindows()
  say(f"{faces} face(s) from {read} input(s) read, {errors} error row(s), in {time.perf_counter() - start:.1f} s.")
  if not read:
    say("error: no input could be read.")
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
