"""FER2013 builder; importing this package registers `fer2013` with tfds."""

from tfds_builders.fer2013.fer2013 import Fer2013, Fer2013DataError, ManualDataNotFoundError

__all__ = ["Fer2013", "Fer2013DataError", "ManualDataNotFoundError"]
