"""SYNTHETIC faces builder (no download); importing this package registers `synthetic_faces`.

The drawing itself is `drawing.py` (numpy and OpenCV only, no tfds).
"""

from tfds_builders.synthetic_faces.synthetic_faces import SyntheticFaces, SyntheticFacesConfig

__all__ = ["SyntheticFaces", "SyntheticFacesConfig"]
