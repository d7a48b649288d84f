"""TFDS builders for facial-expression datasets, written as ArrayRecord shards.

Importing a builder module registers it with tfds; `fer_jax.data` is the
command line that builds them without TensorFlow.
"""

# FER2013 and ExpW share this label order (their integer labels 0..6).
EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

# Builder name -> module that defines it (imported lazily: each import registers one builder).
BUILDER_MODULES: dict[str, str] = {
    "fer2013": "tfds_builders.fer2013.fer2013",
    "expw": "tfds_builders.expw.expw",
    "synthetic_faces": "tfds_builders.synthetic_faces.synthetic_faces",
}
