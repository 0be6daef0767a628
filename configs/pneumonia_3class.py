r"""Normal vs bacterial vs viral pneumonia, labelled from the public release's file names.

  python -m xray_jax.main --config=configs/pneumonia_3class.py --workdir=/tmp/xray/3class \
      --config.data.dir=/path/to/chest_xray

Pneumonia files are named person*_bacteria_*.jpeg or person*_virus_*.jpeg. Accepts the
config args of pneumonia.py (`runlocal`, `model=`, `res=`).
"""

import ml_collections

from xray_jax import config_args

pneumonia = config_args.import_sibling(__file__, "pneumonia")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The pneumonia config with three classes and class-balanced loss weights."""
  config = pneumonia.get_config(arg)
  config.data.label_rules = "NORMAL=/NORMAL/,BACTERIAL=_bacteria_,VIRAL=_virus_"
  config.loss.class_weights = "balanced"  # Viral cases are the smallest class.
  return config
