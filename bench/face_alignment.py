"""Does levelling the eyes (YuNet's landmarks) raise expression accuracy on real scene photos?

    python bench/face_alignment.py        # ../shared/data/expw_sample, the bundled model
    python bench/face_alignment.py --limit 50

For every labelled ExpW face that YuNet finds (IoU >= 0.4 with the label box),
the bundled model classifies the crop predict makes from YuNet's box, once as
it is and once from the photo rotated about the eyes' midpoint so that the eyes
are level. Prints the accuracy of both against the ExpW labels (a FER2013 model
on ExpW faces: the gap between the two is the figure, not the level) and the
median eye-line angle.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from face_detection import DATA, labelled_faces, matches  # noqa: E402  bench/face_detection.py
from fer_jax.serving import face_detection, pretrained  # noqa: E402


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data", default=DATA, help="an ExpW folder: label.lst and origin/")
  p.add_argument("--limit", type=int, default=0, help="first N photos only (0: all)")
  args = p.parse_args()
  os.environ.setdefault("OMP_NUM_THREADS", "1")
  import yuface  # pylint: disable=g-import-not-at-top  (the backend with landmarks)

  truth = labelled_faces(args.data)
  if args.limit:
    truth = {name: truth[name] for name in sorted(truth)[:args.limit]}
  labels = {}
  with open(os.path.join(args.data, "label.lst")) as f:
    for line in f:
      fields = line.split()
      if len(fields) == 8:
        labels[(fields[0], tuple(float(v) for v in (fields[3], fields[2], fields[4], fields[5])))] = int(fields[7])
  classifier = pretrained.load().classifier()
  prep = classifier.prep
  plain_right = aligned_right = total = 0
  angles = []
  for name in sorted(truth):
    image = cv2.imread(os.path.join(args.data, "origin", name))
    h, w = image.shape[:2]
    scale = 320 / max(h, w)
    small = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    for row in yuface.c_detect(np.ascontiguousarray(small)).astype(np.float64):
      score, x, y, bw, bh = row[:5]
      if score < 80 or bw < 12:
        continue
      side = face_detection.YUNET_TO_HAAR_SIDE * math.sqrt(bw * bh) / scale
      cx, cy = (x + bw / 2) / scale, (y + bh / 2) / scale
      box = (round(cx - side / 2), round(cy - side / 2), round(side), round(side))
      for label_box in truth[name]:
        if matches(label_box[None], np.asarray([[box[0], box[1], box[0] + box[2], box[1] + box[3]]], float)):
          break
      else:
        continue
      label = labels[(name, tuple(label_box))]
      eyes = sorted([(row[5] / scale, row[6] / scale), (row[7] / scale, row[8] / scale)])
      angle = math.degrees(math.atan2(eyes[1][1] - eyes[0][1], eyes[1][0] - eyes[0][0]))
      centre = ((eyes[0][0] + eyes[1][0]) / 2, (eyes[0][1] + eyes[1][1]) / 2)
      rotated = cv2.warpAffine(image, cv2.getRotationMatrix2D(centre, angle, 1.0), (w, h),
                               flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
      faces = np.stack([prep.face_pixels(image, box), prep.face_pixels(rotated, box)])
      plain, aligned = np.argmax(classifier(faces), axis=1)
      plain_right += plain == label
      aligned_right += aligned == label
      total += 1
      angles.append(abs(angle))
  if not total:
    raise SystemExit(f"YuNet matched none of the labelled faces in {args.data} (limit {args.limit})")
  print(f"{total} labelled faces found by YuNet; median |eye-line angle| {statistics.median(angles):.1f} degrees")
  print(f"accuracy as detected: {plain_right / total:.4f}; eyes levelled: {aligned_right / total:.4f}")


if __name__ == "__main__":
  main()
