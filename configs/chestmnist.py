r"""Fourteen findings on chest X-rays, one sigmoid each (ChestMNIST, from MedMNIST+).

  python -m xray_jax.main --config=configs/chestmnist.py --workdir=/tmp/xray/chestmnist

downloads MedMNIST's chestmnist_128.npz (zenodo record 10519652, checked by its MD5) on first
use; --config.data.npz_path=/path/to/chestmnist_128.npz reads a local copy instead. Validation
reports the macro ROC AUC over the findings (val/auc), pooled (val/auc_micro) and per finding
(val/auc_NAME). Accepts the config args of pneumonia.py (`runlocal`, `model=`, `res=`); `res`
(28, 64, 128 or 224) picks the file, and `runlocal` the 28 px one.
"""

import ml_collections

from xray_jax import config_args, errors

pneumonia = config_args.import_sibling(__file__, "pneumonia")

# The labels' columns, in MedMNIST's order ("pleural" is pleural thickening).
FINDINGS = ("atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule",
            "pneumonia", "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis",
            "pleural", "hernia")
# MD5 of chestmnist{_SIZE}.npz by size, from MedMNIST's dataset info (not downloaded here).
MD5 = {28: "02c8a6516a18b556561a56cbdd36c4a8", 64: "9de6cd0b934ebb5b7426cfba5efbae16",
       128: "db107e5590b27930b62dbaf558aebee3", 224: "45bd33e6f06c3e8cdb481c74a89152aa"}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The base config as a multilabel task on the ChestMNIST npz file of the chosen size."""
  arg = config_args.parse_arg(arg, runlocal=False, model="resnet18", res=128)
  if arg.res not in MD5:
    raise errors.ConfigError(f"config arg res={arg.res}: ChestMNIST comes at "
                             f"{', '.join(map(str, MD5))} px")
  size = 28 if arg.runlocal else arg.res
  config = pneumonia.get_config(f"runlocal={arg.runlocal},model={arg.model},res={size}")
  config.task = "multilabel"
  config.data.source = "npz"
  name = "chestmnist.npz" if size == 28 else f"chestmnist_{size}.npz"
  config.data.npz_path = f"https://zenodo.org/records/10519652/files/{name}?download=1"
  config.data.checksum = f"md5:{MD5[size]}"
  config.data.class_names = ",".join(FINDINGS)
  if arg.runlocal:
    return config
  config.training.global_batch_size = 128
  config.training.num_epochs = 10.0  # 78,468 training images: 613 steps an epoch.
  config.training.eval_batch_size = 256  # 11,219 validation images.
  return config
