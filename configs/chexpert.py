r"""CheXpert (v1.0 or v1.0-small): 14 observations of frontal films, multi-label, with the
uncertain (-1) and unmentioned (blank) labels kept for the task to treat.

  python -m xray_jax.main --config=configs/chexpert.py --workdir=/tmp/xray/chexpert \
      --config.data.dir=/path/to/CheXpert-v1.0-small

Reads DIR/train.csv and DIR/valid.csv, whose `Path` column starts with the folder's own name
(CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg), so image paths are read
from DIR's parent. valid.csv (radiologist labels, 234 films, other patients) is the test
split; validation is carved from train by patient (patientNNNNN in the path). Accepts the
config args of pneumonia.py (`runlocal`, `model=`, `res=`).
"""

import ml_collections

from xray_jax import config_args

pneumonia = config_args.import_sibling(__file__, "pneumonia")

# The observation columns of train.csv and valid.csv, in their order.
OBSERVATIONS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity",
                "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis",
                "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
                "Support Devices")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The pneumonia config on CheXpert's tables, frontal views only; DenseNet-121 (CheXNet's
  baseline) unless `model=` says otherwise."""
  arg = config_args.parse_arg(arg, runlocal=False, model="densenet121", res=224)
  config = pneumonia.get_config(f"runlocal={arg.runlocal},model={arg.model},res={arg.res}")
  config.task = "multilabel"
  data = config.data
  data.source = "csv"
  data.class_names = ",".join(OBSERVATIONS)
  data.label_column = ""
  data.csv_files = "train=train.csv,test=valid.csv"
  data.image_root = ".."
  data.image_path = "{Path}"
  data.view_column = "Frontal/Lateral"
  data.views = "Frontal"
  data.group_pattern = r"(?:^|/)(patient\d+)/"
  return config
