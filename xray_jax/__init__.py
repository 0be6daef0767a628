"""xray_jax: convolutional X-ray classifiers in JAX and Flax."""
