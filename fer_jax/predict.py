"""`python -m fer_jax.predict`: the command line of fer_jax.serving.predict (a shorter command)."""

from fer_jax.serving.predict import main

if __name__ == "__main__":
  raise SystemExit(main())
