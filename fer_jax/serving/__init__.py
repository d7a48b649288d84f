"""Using a trained model: load it (inference.py, pretrained.py), find faces (face_detection.py),
classify photos, videos and cameras (predict.py, predict_output.py), export it (export.py)."""
