"""xray_jax: convolutional X-ray classifiers in JAX and Flax."""

from xray_jax.speed import xla_flags

xla_flags.set_defaults()
