"""XLA flags that the binaries set in `main()`, before JAX starts its backends (importing the
package sets nothing; a Python user opts in with `set_defaults()`).

From jaxlib 0.10, XLA:CPU hands convolutions to YNNPACK, whose kernels ran our ResNet layer
shapes slower than XLA's Eigen kernels, and whole training steps with them too
(docs/speed.md has the figures), so convolutions are left to Eigen; matmuls and reductions
stay with YNNPACK. Only CPU compilations read these flags.
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
