"""fer_jax: a JAX/Flax trainer for facial expression recognition.

`fer_jax.detect_expressions(photo)` classifies the faces of a photo with the bundled model (docs/PREDICTION.md).
It is imported on first use, so `import fer_jax` stays light (no jax, flax or OpenCV).
"""

from typing import Any

__all__ = ["detect_expressions", "ExpressionDetector", "Face"]


def __getattr__(name: str) -> Any:
  if name in __all__:
    from fer_jax.serving import expressions  # pylint: disable=g-import-not-at-top

    return getattr(expressions, name)
  raise AttributeError(f"module 'fer_jax' has no attribute {name!r}")
