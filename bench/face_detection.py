"""Face detectors on real scene photos: recall, false boxes per photo, and detect + classify frames/s.

    python bench/face_detection.py                       # yunet and haar on ../shared/data/expw_sample
    python bench/face_detection.py --detectors haar --limit 200

Recall: the fraction of label.lst faces matched by a detection with IoU >= 0.4
(greedy one-to-one, highest IoU first). False boxes: detections matching no
labelled face, per photo; ExpW labels only some of the faces in a photo, so
part of these are real faces. Detection uses predict's still-image settings.
Speed: predict's video-frame path (detector + the bundled model, one batch of
the faces found) on the photos resized to 640x480, median ms per frame over
--frames frames after a warm-up, in this process.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fer_jax.serving import face_detection, predict, pretrained  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "expw_sample")


def labelled_faces(data: str) -> dict[str, np.ndarray]:
  """image name -> [faces, 4] label boxes as x0, y0, x1, y1."""
  faces = collections.defaultdict(list)
  with open(os.path.join(data, "label.lst")) as f:
    for line in f:
      fields = line.split()
      if len(fields) == 8:
        top, left, right, bottom = map(float, fields[2:6])
        faces[fields[0]].append((left, top, right, bottom))
  return {name: np.asarray(boxes) for name, boxes in faces.items()}


def matches(truth: np.ndarray, found: np.ndarray, threshold: float = 0.4) -> int:
  """How many labelled boxes a distinct detection overlaps with IoU >= threshold (greedy, best first)."""
  if not len(truth) or not len(found):
    return 0
  lo = np.maximum(truth[:, None, :2], found[None, :, :2])
  hi = np.minimum(truth[:, None, 2:], found[None, :, 2:])
  inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
  area = lambda b: np.prod(b[:, 2:] - b[:, :2], axis=1)
  iou = inter / (area(truth)[:, None] + area(found)[None, :] - inter)
  used_t, used_f = set(), set()
  for value, i, j in sorted(((iou[i, j], i, j) for i, j in zip(*np.nonzero(iou >= threshold))), reverse=True):
    if i not in used_t and j not in used_f:
      used_t.add(i)
      used_f.add(j)
  return len(used_t)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data", default=DATA, help="an ExpW folder: label.lst and origin/")
  p.add_argument("--detectors", default="yunet,haar")
  p.add_argument("--limit", type=int, default=0, help="first N photos only (0: all)")
  p.add_argument("--frames", type=int, default=100, help="640x480 frames timed per detector")
  args = p.parse_args()
  truth = labelled_faces(args.data)
  names = sorted(truth)[:args.limit or None]
  classifier = pretrained.load().classifier()
  classifier.warm_up()
  print(f"{len(names)} photos, {sum(len(truth[n]) for n in names)} labelled faces ({args.data})")
  print(f"{'detector':10s} {'recall@0.4':>10s} {'false/photo':>11s} {'boxes':>6s} {'ms/frame':>9s} {'frames/s':>9s}")
  for name in args.detectors.split(","):
    photo_detector = face_detection.create(name, video=False)
    hits = boxes = false = 0
    for image_name in names:
      image = cv2.imread(os.path.join(args.data, "origin", image_name))
      found = np.asarray([(x, y, x + w, y + h) for x, y, w, h in photo_detector(image)], np.float64).reshape(-1, 4)
      matched = matches(truth[image_name], found)
      hits, boxes, false = hits + matched, boxes + len(found), false + len(found) - matched
    predictor = predict.Predictor(classifier, face_detection.create(name, video=True))
    frames = [cv2.resize(cv2.imread(os.path.join(args.data, "origin", n)), (640, 480), interpolation=cv2.INTER_AREA)
              for n in names[:args.frames]]
    predictor.frame(frames[0])
    times = []
    for frame in frames:
      start = time.perf_counter()
      predictor.frame(frame)
      times.append(time.perf_counter() - start)
    ms = 1000 * statistics.median(times)
    n_faces = sum(len(truth[n]) for n in names)
    print(f"{name:10s} {hits / n_faces:10.3f} {false / len(names):11.2f} {boxes:6d} {ms:9.1f} {1000 / ms:9.1f}")


if __name__ == "__main__":
  main()
