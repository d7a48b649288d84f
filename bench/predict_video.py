"""Real-time check: frames/s of face detection + expression classification on a 640x480 video.

    python bench/predict_video.py                      # 150 frames, 5 repeats, YuNet (predict's default)
    python bench/predict_video.py --detector haar
    python bench/predict_video.py --scale_factor 1.1 --detect_size 320 --repeats 7

Makes its own video (nothing is trained or downloaded): one face moving
slowly over a textured background, a FER2013 test image scaled up when
../shared/data/fer2013 is present (else a SYNTHETIC face), written with
cv2.VideoWriter (mp4v) and read back. The model is the seeds' CNN
(configs/fer2013_cnn.py: conv 32/64/128, dense 256/128) with random
parameters, which cost the same as trained ones. Prints frames/s, each the
median of --repeats passes, with the passes of all measurements interleaved
so that load from other jobs on the machine hits them alike, and frames per
CPU-second of this process (what the work costs, whatever else runs):
  detect+classify  Predictor.frame: detection, crop, jitted classification
  detect           the detector alone
  classify         crop + classification of the known box alone (batch padded to 1)
  classify@32      the same padded to a fixed batch of 32 (why batches are bucketed)
  end to end       the CLI's path: decode the mp4, detect, classify, make rows
and the number of frames in which exactly one face was found.
The bar: >= 30 frames/s for detect+classify on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
import tempfile
import time

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fer_jax.serving import face_detection, inference, predict  # noqa: E402

REAL_FER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data",
                        "fer2013")
CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
  """A BGR scene: colour gradients, a few blurred shapes and noise (something for the cascade to reject)."""
  y, x = np.mgrid[0:height, 0:width].astype(np.float32)
  img = np.stack([60 + 120 * x / width, 80 + 90 * y / height, 150 - 60 * x / width], -1)
  for _ in range(12):
    cx, cy, r = rng.integers(0, width), rng.integers(0, height), int(rng.integers(10, 60))
    cv2.circle(img, (int(cx), int(cy)), r, tuple(float(v) for v in rng.integers(0, 255, 3)), -1)
  img = cv2.GaussianBlur(img, (0, 0), 3) + rng.normal(0, 6, img.shape).astype(np.float32)
  return np.clip(img, 0, 255).astype(np.uint8)


def face_candidates() -> list[tuple[str, np.ndarray]]:
  """Grey face crops to paste: real FER2013 test faces when present, else SYNTHETIC ones."""
  files = sorted(glob.glob(os.path.join(REAL_FER, "test", "happy", "*.jpg")))[:40]
  faces = [("fer2013 " + os.path.basename(f), cv2.imread(f, cv2.IMREAD_GRAYSCALE)) for f in files]
  if not faces:
    from tfds_builders.synthetic_faces import drawing as synthetic_faces
    faces = [(f"synthetic #{i}", face) for i, face in
             enumerate(synthetic_faces.draw_faces(np.full(20, 3), seed=0))]
  return faces


def make_video(path: str, frames: int, detector) -> str:
  """Writes the test video; returns which face it shows (the first the detector finds when pasted)."""
  rng = np.random.default_rng(0)
  scene = background(480, 640, rng)
  side = 200
  for name, face in face_candidates():
    big = cv2.cvtColor(cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC), cv2.COLOR_GRAY2BGR)
    frames_bgr = []
    for i in range(frames):  # drifts right and back, bobs up and down
      x = 220 + int(60 * np.sin(2 * np.pi * i / 90))
      y = 140 + int(20 * np.sin(2 * np.pi * i / 45))
      frame = scene.copy()
      frame[y:y + side, x:x + side] = big
      frames_bgr.append(frame)
    if len(detector(frames_bgr[0])) == 1:
      writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (640, 480))
      for frame in frames_bgr:
        writer.write(frame)
      writer.release()
      return name
  raise SystemExit("No candidate face was detected when pasted into the scene.")


def read_frames(path: str) -> list[np.ndarray]:
  capture = cv2.VideoCapture(path)
  frames = []
  ok, frame = capture.read()
  while ok:
    frames.append(frame)
    ok, frame = capture.read()
  capture.release()
  return frames


def cnn_classifier(batch_size: int) -> inference.FaceClassifier:
  """The seeds' CNN with random parameters, FER2013 preprocessing (48x48 grey, [0, 1])."""
  import jax
  import jax.numpy as jnp

  from fer_jax import model_factory
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"))
  import fer2013_cnn  # noqa: E402

  config = fer2013_cnn.get_config()
  model = model_factory.create_model(config, len(CLASSES))
  variables = model.init({"params": jax.random.key(0)}, jnp.zeros((1, 48, 48, 1)), train=False)
  prep = inference.Preprocessing(class_names=CLASSES, image_shape=(48, 48, 1))
  return inference.FaceClassifier(inference.probabilities_fn(model.apply, prep), {"params": variables["params"]},
                                  prep, batch_size=batch_size)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--frames", type=int, default=150)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--detector", choices=face_detection.DETECTORS, default="yunet", help="predict's default: yunet")
  p.add_argument("--detect_size", type=int, default=face_detection.VIDEO["detect_size"])
  p.add_argument("--scale_factor", type=float, default=face_detection.VIDEO["scale_factor"], help="haar only")
  p.add_argument("--min_neighbors", type=int, default=5, help="haar only")
  args = p.parse_args()

  try:
    haar = {"scale_factor": args.scale_factor, "min_neighbors": args.min_neighbors}
    detector = face_detection.create(args.detector, video=True, detect_size=args.detect_size,
                                     **(haar if args.detector == "haar" else {}))
  except face_detection.DetectorUnavailableError as e:
    raise SystemExit(f"predict_video: {e}")
  classifier = cnn_classifier(batch_size=32)
  classifier.warm_up()
  predictor = predict.Predictor(classifier, detector)
  with tempfile.TemporaryDirectory() as tmp:
    video = os.path.join(tmp, "one_face_640x480.mp4")
    face_name = make_video(video, args.frames, detector)
    frames = read_frames(video)
    boxes = [detector(f) for f in frames]
    found = sum(len(b) == 1 for b in boxes)
    box = boxes[0][0]
    padded = np.zeros((32, 48, 48, 1), np.uint8)

    def detect_classify():
      for f in frames:
        predictor.frame(f)

    def detect():
      for f in frames:
        detector(f)

    def classify():
      for f in frames:
        classifier(predictor.prep.face_pixels(f, box)[None])

    def classify_32():
      for f in frames:
        padded[0] = predictor.prep.face_pixels(f, box)
        classifier(padded)

    def end_to_end():
      rows = list(predictor.video(video, video))
      assert len(rows) >= found

    runs = {"detect+classify": detect_classify, "detect": detect, "classify": classify,
            "classify@32": classify_32, "end to end": end_to_end}
    times: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeats):
      for name, fn in runs.items():
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        times[name].append(time.perf_counter() - start)
        cpu[name].append(time.process_time() - start_cpu)

  print(f"video: {len(frames)} frames 640x480 (mp4v), one face ({face_name}, pasted at 200x200); "
        f"exactly one face found in {found}/{len(frames)} frames")
  settings = (f"scale_factor {args.scale_factor}, min_neighbors {args.min_neighbors}" if args.detector == "haar"
              else f"min_score {detector.min_score}")
  print(f"detector: {args.detector}, detect_size {args.detect_size}, {settings}; "
        f"OpenCV {cv2.__version__} with {cv2.getNumThreads()} threads; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
  for name, ts in times.items():
    fps = [len(frames) / t for t in ts]
    print(f"{name:>16}: {statistics.median(fps):7.1f} frames/s  (median of {len(ts)}; "
          f"min {min(fps):.1f}, max {max(fps):.1f}); {len(frames) / statistics.median(cpu[name]):7.1f} "
          "frames per CPU-second")


if __name__ == "__main__":
  main()
