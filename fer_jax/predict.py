"""`python -m fer_jax.predict`: the command line of fer_jax.serving.predict (kept here so the command stays short)."""

import sys

from fer_jax.serving.predict import main

if __name__ == "__main__":
  sys.exit(main())
