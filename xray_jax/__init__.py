"""xray_jax: convolutional X-ray classifiers in JAX and Flax.

Importing the package changes nothing in the process: the binaries set their process-wide
settings (`speed.xla_flags`, `speed.huge_pages`) in their own `main()`.
"""
