"""fer_jax: a JAX/Flax trainer for facial expression recognition."""
