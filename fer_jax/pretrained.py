"""`python -m fer_jax.pretrained`: the command line of fer_jax.serving.pretrained (a shorter command)."""

from fer_jax.serving.pretrained import main

if __name__ == "__main__":
  raise SystemExit(main())
