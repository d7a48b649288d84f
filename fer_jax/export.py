"""`python -m fer_jax.export`: the command line of fer_jax.serving.export (kept here so the command stays short)."""

import sys

from fer_jax.serving.export import main

if __name__ == "__main__":
  sys.exit(main())
