"""XLA flags that xray_jax sets before JAX starts its backends.

From jaxlib 0.10, XLA:CPU hands convolutions to YNNPACK, which ran them at 70-180 GFLOP/s on a
2-core AVX-512 CPU where XLA's Eigen kernels reached 125-195 (forward and gradients, ResNet
layer shapes, batch 32): training steps measured 1.2-1.6x faster with convolutions left to
Eigen. Matmuls and reductions stay with YNNPACK. Only CPU compilations read these flags.
"""

import importlib.metadata
import os
import re

YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
CPU_CONVOLUTIONS_TO_EIGEN = f"{YNN_FUSION_FLAG}=-individual_convolution"
FIRST_JAXLIB = (0, 10)  # The first jaxlib checked to know the flag; older ones abort on it.


def _version(text: str) -> tuple[int, ...]:
  """(major, minor) of a version string such as 0.10.2 or 1.0rc1."""
  return tuple(int(re.match(r"\d*", part).group() or 0) for part in text.split(".")[:2])


def set_defaults(environ: os._Environ | dict[str, str] = os.environ) -> None:
  """Appends CPU_CONVOLUTIONS_TO_EIGEN to XLA_FLAGS unless XLA_FLAGS already names the YNN
  flag (the user's choice wins) or jaxlib is older than FIRST_JAXLIB. Takes effect only
  before JAX's first computation."""
  flags = environ.get("XLA_FLAGS", "")
  if YNN_FUSION_FLAG in flags:
    return
  try:
    jaxlib = importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return
  if _version(jaxlib) >= FIRST_JAXLIB:
    environ["XLA_FLAGS"] = f"{flags} {CPU_CONVOLUTIONS_TO_EIGEN}".strip()
