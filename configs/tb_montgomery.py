r"""Tuberculosis vs normal on the Montgomery County chest X-ray set (NLM), labelled by file
name.

  python -m xray_jax.main --config=configs/tb_montgomery.py --workdir=/tmp/xray/montgomery \
      --config.data.dir=/path/to/MontgomerySet/CXR_png

CXR_png/MCUCXR_0001_0.png: _0 normal, _1 tuberculosis; one film per patient (the lung masks
of ManualMask/ are not read). 138 films: validation is carved from all of them. Accepts
the config args of pneumonia.py (`runlocal`, `model=`, `res=`).
"""

import ml_collections

from xray_jax import config_args

tb_shenzhen = config_args.import_sibling(__file__, "tb_shenzhen")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The Shenzhen config with Montgomery's file names."""
  config = tb_shenzhen.get_config(arg)
  config.data.group_pattern = r"(?:^|/)(MCUCXR_\d+)_[01]\.png$"
  return config
