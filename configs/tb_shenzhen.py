r"""Tuberculosis vs normal on the Shenzhen chest X-ray set (NLM), labelled by file name.

  python -m xray_jax.main --config=configs/tb_shenzhen.py --workdir=/tmp/xray/shenzhen \
      --config.data.dir=/path/to/ChinaSet_AllFiles/CXR_png

CXR_png/CHNCXR_0001_0.png: _0 normal, _1 tuberculosis; one film per patient. The set has no
split: validation is carved from all of it (a held-out test needs a folder of its own).
Accepts the config args of pneumonia.py (`runlocal`, `model=`, `res=`).
"""

import ml_collections

from xray_jax import config_args

pneumonia = config_args.import_sibling(__file__, "pneumonia")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The pneumonia config, labelled by the _0 / _1 ending of the file names."""
  config = pneumonia.get_config(arg)
  config.data.source = "folder"
  config.data.label_rules = "NORMAL=_0.png,TUBERCULOSIS=_1.png"
  config.data.group_pattern = r"(?:^|/)(CHNCXR_\d+)_[01]\.png$"
  return config
