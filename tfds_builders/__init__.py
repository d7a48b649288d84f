"""TFDS builders for facial-expression datasets, written as ArrayRecord shards.

Importing a builder module registers it with tfds; `python -m fer_jax.data` is
the command line that builds them without TensorFlow (fer_jax.data.builders
lists them). The builders take their class names, crop window and resize from
fer_jax.data.faces, the one preprocessing that prediction uses too.
"""
