r"""MIMIC-CXR-JPG 2.0.0: the 14 CheXpert labels of each study on its frontal (PA, AP) films,
multi-label, with the official patient-level split.

  python -m xray_jax.main --config=configs/mimic_cxr.py --workdir=/tmp/xray/mimic \
      --config.data.dir=/path/to/physionet.org/files/mimic-cxr-jpg/2.0.0

Joins DIR/mimic-cxr-2.0.0-split.csv.gz (one row per image: dicom_id, study_id, subject_id,
split of train / validate / test), -chexpert.csv.gz (labels per study, a few studies have
none: their images are left out) and -metadata.csv.gz (ViewPosition per image); images are
DIR/files/pNN/pSUBJECT/sSTUDY/DICOM.jpg. Accepts the config args of pneumonia.py
(`runlocal`, `model=`, `res=`).
"""

import ml_collections

from xray_jax import config_args

chexpert = config_args.import_sibling(__file__, "chexpert")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The CheXpert config (same 14 observations, which mimic-cxr-2.0.0-chexpert.csv.gz
  holds alphabetically) on MIMIC-CXR-JPG's joined tables and official split."""
  config = chexpert.get_config(arg)
  data = config.data
  data.csv_files = ",".join(f"mimic-cxr-2.0.0-{name}.csv.gz"
                            for name in ("split", "chexpert", "metadata"))
  data.csv_join_columns = "subject_id,study_id,dicom_id"
  data.image_root = ""
  data.image_path = "files/p{subject_id:.2}/p{subject_id}/s{study_id}/{dicom_id}.jpg"
  data.patient_column = "subject_id"
  data.group_pattern = r"/p(\d{8})/s\d{8}/"  # files/p10/p10000032/s50414267/...
  data.view_column = "ViewPosition"
  data.views = "PA,AP"
  data.split_column = "split"
  data.split_values = "train=train,val=validate,test=test"
  return config
