"""`python -m fer_jax.pretrained`: the command line of fer_jax.serving.pretrained (kept here so the command stays short)."""

import sys

from fer_jax.serving.pretrained import main

if __name__ == "__main__":
  sys.exit(main())
