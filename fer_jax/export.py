"""`python -m fer_jax.export`: the command line of fer_jax.serving.export (a shorter command)."""

from fer_jax.serving.export import main

if __name__ == "__main__":
  raise SystemExit(main())
