r"""NIH ChestX-ray14: 14 findings per image, multi-label (docs/data.md has the layout).

  python -m xray_jax.main --config=configs/chestxray14.py --workdir=/tmp/xray/cxr14 \
      --config.data.dir=/path/to/ChestX-ray14

Reads DIR/Data_Entry_2017.csv (the Box release names it Data_Entry_2017_v2020.csv: set
data.csv_files) and DIR/images/*.png. The official train_val_list.txt / test_list.txt give
train and test; validation is carved from train_val by patient (`Patient ID`).

Config args: those of pneumonia.py (`runlocal`, `model=`, `res=`), and
  lists   read label lists instead: DIR/labels/{train,val,test}_list.txt, each line an
          image name and its 14 labels (0/1 in FINDINGS order, space separated), the split
          of the public CheXNet reimplementation (arnoweng/CheXNet); validation is then
          val_list.txt.
"""

import ml_collections

from xray_jax import config_args

pneumonia = config_args.import_sibling(__file__, "pneumonia")

# The 14 findings in the order of the ChestX-ray14 paper and its benchmarks.
FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
            "Pneumonia", "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis",
            "Pleural_Thickening", "Hernia")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The pneumonia config on ChestX-ray14's table, official split and 14 findings;
  DenseNet-121 (CheXNet's baseline) unless `model=` says otherwise."""
  arg = config_args.parse_arg(arg, runlocal=False, model="densenet121", res=224, lists=False)
  config = pneumonia.get_config(f"runlocal={arg.runlocal},model={arg.model},res={arg.res}")
  config.task = "multilabel"
  data = config.data
  data.source = "csv"
  data.class_names = ",".join(FINDINGS)
  data.label_column = ""
  data.image_path = "images/{Image Index}"
  data.group_pattern = r"(?:^|/)(\d{8})_\d{3}\.png$"  # 00000001_000.png: patient 00000001.
  if arg.lists:
    data.csv_files = ",".join(f"{split}=labels/{split}_list.txt"
                              for split in ("train", "val", "test"))
    data.csv_delimiter = " "
    data.csv_columns = ",".join(("Image Index", *FINDINGS))
    return config
  data.csv_files = "Data_Entry_2017.csv"
  data.findings_column = "Finding Labels"  # "Effusion|Infiltration", or "No Finding".
  data.patient_column = "Patient ID"
  data.split_lists = "train=train_val_list.txt,test=test_list.txt"
  return config
