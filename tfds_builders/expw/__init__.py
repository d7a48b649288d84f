"""ExpW (Expression in-the-Wild) builder: `expw.py` (tfds) and `crop.py` (TensorFlow-free helpers).

Kept empty of imports so worker processes can import `tfds_builders.expw.crop` without tfds.
"""
