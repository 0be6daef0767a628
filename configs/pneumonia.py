r"""Pneumonia vs normal on chest X-rays (Kermany et al. 2018 layout).

  python -m xray_jax.main --config=configs/pneumonia.py --workdir=/tmp/xray/run1 \
      --config.data.dir=/path/to/chest_xray

Without --config.data.dir, the public dataset is downloaded and prepared with TFDS on first
use (data.source="auto").

Config args (after a colon, comma separated):
  runlocal       a one-minute smoke run of this config (tiny model, few steps).
  model=NAME     cnn (default), resnet18, resnet34, resnet50 or densenet121.
  res=N          square input size in pixels (default 224).
e.g. `--config=configs/pneumonia.py:model=resnet18,res=128`.
"""

import ml_collections

from xray_jax import config_args

# Fields of the model families with BatchNorm layers.
BATCH_NORM_FIELDS = dict(
    batch_norm_momentum=0.9,  # BatchNorm running statistics: m * old + (1 - m) * batch.
)
# Style randomization in feature space, every family: MixStyle (Zhou et al. 2021).
STYLE_FIELDS = dict(
    style_mixing=0.0,  # MixStyle after the first two stages: probability per batch; 0: off.
    style_mixing_alpha=0.1,  # Beta(alpha, alpha) draws each image's blend weight.
)
# Each model family's own fields, the ones a user tunes, passed to its constructor.
MODEL_FIELDS = {
    "cnn": dict(
        widths=(32, 64, 128, 256),  # Output channels of each conv block.
        convs_per_block=1,  # Conv -> (BN) -> ReLU layers before each 2x2 max-pool.
        batch_norm=True,  # BatchNorm after every conv.
        pooling="avg",  # How the last feature map is reduced: avg, max or flatten.
        dense=(256,),  # Hidden dense layers of the head.
        dropout=0.3,  # Dropout rate before each dense layer of the head.
        **BATCH_NORM_FIELDS,
        **STYLE_FIELDS,
    ),
    "resnet": dict(
        width=64,  # Channels of the first stage; doubled at every stage.
        # imagenet (7x7 stride-2 convolution, 3x3 stride-2 max-pool), small (3x3 stride-1
        # convolution, no pool), fast (4x4 stride-4 convolution, 3x3 stride-2 max-pool: an
        # input costs about what half its size does with imagenet) or auto: small below 28 px,
        # else imagenet (from 28 px up the small stem costs more for no gain in accuracy:
        # docs/results.md, Input size and stem).
        stem="auto",
        dropout=0.0,  # Dropout rate before the classifier.
        **BATCH_NORM_FIELDS,
        **STYLE_FIELDS,
    ),
    "densenet": dict(
        width=64,  # Channels of the stem.
        growth_rate=32,  # Channels that each dense layer adds to its block's feature map.
        block_sizes=(6, 12, 24, 16),  # Dense layers per block (DenseNet-121's).
        stem="auto",  # As the ResNets' stem: imagenet, small, fast or auto.
        dropout=0.0,  # Dropout rate before the classifier.
        **BATCH_NORM_FIELDS,
        **STYLE_FIELDS,
    ),
}

# What `runlocal` shrinks: a few seconds to compile (a full-depth DenseNet takes a minute).
RUNLOCAL_MODEL_FIELDS = dict(
    cnn=dict(widths=(8, 16), dense=(16,)),
    resnet=dict(width=8),
    densenet=dict(width=8, growth_rate=4, block_sizes=(2, 2, 2, 2)),
)


def model_config(name: str) -> ml_collections.ConfigDict:
  """Returns the model section for a registered model name: name, dtype and the fields of
  its family."""
  family = config_args.model_family(name)
  fields = MODEL_FIELDS.get(family, {})
  return ml_collections.ConfigDict(dict(
      name=name,  # Registered model: cnn, resnet18, resnet34, resnet50, densenet121.
      dtype="float32",  # Compute dtype: float32, or bfloat16 on GPU/TPU. Params stay float32.
      **fields,
  ))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the pneumonia config, adjusted by the config args described above."""
  arg = config_args.parse_arg(arg, runlocal=False, model="cnn", res=224)
  config = ml_collections.ConfigDict()
  config.seed = 0  # Seeds parameter init, dropout and the data order.
  # What the model predicts: single_label (one of data.class_names per image, a softmax) or
  # multilabel (each of data.class_names, the findings, present or not: one sigmoid each;
  # labels are vectors with missing entries: configs/chestmnist.py, chestxray14.py, chexpert.py).
  config.task = "single_label"

  config.data = ml_collections.ConfigDict()
  # folder: ROOT/{train,val,test}/{CLASS}/*.{jpeg,jpg,png,dcm} (with data.label_rules also a
  # flat ROOT/*.png), or dicom_csv, csv, npz, tfds (below); auto: folder when data.dir is
  # given, else tfds (downloaded and prepared on first use).
  config.data.source = "auto"
  # ROOT of the folder layout (or of dicom_csv). Empty with source auto or tfds: download.
  config.data.dir = ""
  config.data.label_rules = ""  # Empty: classes are the folder names. Else labels from paths,
  # "CLASS=SUBSTRING,...": the first class whose substring is in the path (see pneumonia_3class).
  config.data.image_size = arg.res  # Images are resized to image_size x image_size.
  config.data.grayscale = True  # One channel; false replicates the gray image to three.
  config.data.mean = 0.5  # Normalization: (pixel in [0, 1] - mean) / std.
  config.data.std = 0.25  # Scale of that normalization.
  # Per-image intensity standardization after the resize, in training, evaluation and
  # predict: none, equalize (histogram equalization) or clahe (adaptive, contrast-limited).
  # CLAHE is the default: it raised specificity on validation and under the stress test's
  # shifts, at the same ROC AUC (docs/results.md, the ablation).
  config.data.intensity = "clahe"
  config.data.clahe_clip_limit = 0.01  # clahe: contrast limit in (0, 1]; higher is stronger.
  config.data.val_fraction = 0.1  # Stratified share of train held out when there is no val/.
  config.data.split_seed = 0  # Seeds that validation split.
  # The validation split keeps each patient's images on one side. A patient is the first
  # group of this regular expression's first match in a file's path (relative to the dataset
  # root); a path it does not match is a patient of its own. The default reads the public
  # layout: person{ID}_{bacteria|virus}_{N}, IM-{ID}-{N}, NORMAL2-IM-{ID}-{N}.
  config.data.group_pattern = r"(?:^|/)(person\d+|(?:NORMAL2-)?IM-\d+)[_-][^/]*$"
  config.data.dicom_multiframe = "first"  # Multi-frame .dcm: use the first frame, or "error".
  # Before training every train and validation image is decoded once, in parallel. stop:
  # unreadable files stop the run, all listed in one message; skip: they are left out and
  # listed in the log; off: no check.
  config.data.check_images = "stop"
  # source=dicom_csv (RSNA Pneumonia Challenge layout): DIR/dicom_subdir/<id>.dcm, labelled by
  # a CSV with one or more rows per id; an id takes the highest label of its rows.
  config.data.labels_csv = "stage_2_train_labels.csv"  # Relative to data.dir unless absolute.
  config.data.dicom_subdir = "stage_2_train_images"  # Folder of <id>.dcm under data.dir.
  config.data.id_column = "patientId"  # CSV column with the image's file name, less .dcm.
  # CSV column with the integer label (dicom_csv, csv). Empty for csv with task multilabel.
  config.data.label_column = "Target"
  # Names of labels 0, 1, ... (dicom_csv, csv, npz); with task multilabel, the findings in
  # output order: each a CSV column, or a value of data.findings_column.
  config.data.class_names = "NORMAL,PNEUMONIA"
  # source=csv: images listed in CSV tables (configs/chestxray14.py, chexpert.py, mimic_cxr.py).
  # The tables, relative to data.dir unless absolute (a .gz file is read gzipped): FILE, or
  # FILE,FILE,... joined on data.csv_join_columns, or SPLIT=FILE,... a table per split
  # (train required; val, test optional).
  config.data.csv_files = ""
  config.data.csv_join_columns = ""  # Joined rows match on those of these columns both have.
  config.data.csv_delimiter = ","  # Field separator; " " reads space-separated lists.
  config.data.csv_columns = ""  # Empty: the first line names the columns; else their names.
  config.data.image_root = ""  # Where data.image_path starts, relative to data.dir; ".." too.
  # Each image's path under data.image_root: a template of the row's columns, {COLUMN}, or
  # {COLUMN:.N} for its first N characters, e.g. "images/{Image Index}".
  config.data.image_path = ""
  # Multi-label from one column listing the findings present (e.g. "Effusion|Infiltration";
  # any other value, such as "No Finding", sets all absent; blank: all missing). Empty: each
  # name of data.class_names is a column of 1 (present), 0 (absent), -1 (uncertain), blank
  # (missing); written 1.0, 0.0, -1.0 too.
  config.data.findings_column = ""
  config.data.findings_separator = "|"  # Separates the findings in data.findings_column.
  # CSV column of the patient id: records carry it, the validation split and the bootstrap
  # group by it. Empty: data.group_pattern on the image path.
  config.data.patient_column = ""
  config.data.view_column = ""  # Keep only the rows whose value here is one of data.views.
  config.data.views = ""  # Those values, comma separated, e.g. "PA,AP" (no view_column: all).
  # The split of each row: this column's value (mapped by data.split_values), or which list
  # of data.split_lists holds the image's file name, or the file (SPLIT=FILE in
  # data.csv_files); none of them: all train. Validation not given is carved from train.
  config.data.split_column = ""
  config.data.split_values = "train=train,val=val,test=test"  # SPLIT=VALUE of split_column.
  # SPLIT=FILE,...: text files (relative to data.dir) naming one image file a line (its first
  # field); rows in none are left out.
  config.data.split_lists = ""
  # source=npz: MedMNIST-style {train,val,test}_{images,labels} arrays, named by class_names.
  config.data.npz_path = "data/pneumoniamnist.npz"  # A local path, or a URL to download.
  # source=tfds: a builder of xray_jax.data.tfds_builders, prepared once (ArrayRecord files).
  config.data.tfds_name = "chest_xray_pneumonia"  # Or pneumonia_mnist/{28,64,128,224}.
  config.data.tfds_data_dir = ""  # Prepared datasets; empty: TFDS's ~/tensorflow_datasets.
  # chest_xray_pneumonia is prepared from data.dir when it holds train/, else downloaded.
  config.data.download_dir = "data/downloads"  # Downloads, resumed and kept for reuse.
  config.data.mirror_url = ""  # Folder or URL holding the same file names, tried first.
  config.data.download_url = ""  # Replaces the TFDS builder's archive URL.
  config.data.checksum = ""  # md5:HEX or sha256:HEX of npz_path or that archive.
  config.data.num_workers = 4  # grain worker processes for decoding; 0 decodes in-process.
  config.data.read_threads = 2  # Threads that assemble batches in the main process.
  config.data.prefetch = 4  # Batches prepared ahead of the train step.
  # Load each training image once, before training (decoded, resized, standardized), into a
  # float16 file that the grain workers share: every epoch then only augments. 2 bytes a
  # pixel, once per process. Without it, CLAHE runs on every image every epoch, and the input
  # pipeline cannot keep a GPU busy.
  config.data.cache_images = True
  config.data.cache_dir = ""  # Folder for that file (deleted at exit); empty: $TMPDIR or /tmp.
  # Oversample the smaller classes so each fills about the same share of the training batches
  # (an alternative to loss.class_weights=balanced; an epoch still counts the train images).
  # single_label only.
  config.data.balanced_sampling = False
  # Where the train augmentation runs: host (grain workers, PIL) or device (inside the jitted
  # train step, one bilinear resampling per image; the workers then only read and batch, and
  # an accelerator does the rest at little cost). Same transforms and ranges, other draws.
  config.data.augment_on = "host"
  # Named evaluation sets beside validation, evaluated at every evaluation step and by name
  # in `xray_jax.evaluate --split=NAME`: "NAME=test" (the source's test split) or
  # "NAME=FOLDER" (FOLDER/{CLASS}/*), comma separated; e.g. "external=test".
  config.data.eval_sets = ""
  config.data.augment = ml_collections.ConfigDict()  # Train split only.
  config.data.augment.rotation_degrees = 10.0  # Uniform rotation in [-r, r] degrees.
  config.data.augment.scale_min = 0.9  # Uniform zoom factor in [scale_min, scale_max];
  config.data.augment.scale_max = 1.1  # > 1 zooms in (a random crop, resized back).
  # Proportions: the height times s and the width divided by s, log s uniform in [-a, a]
  # (0.2: 0.82 to 1.22); 0 keeps them (docs/results.md, Errors on the external set).
  config.data.augment.stretch = 0.0
  config.data.augment.translate_fraction = 0.08  # Shift of up to this fraction of the size.
  config.data.augment.hflip_prob = 0.0  # Chest films have a laterality: off by default.
  config.data.augment.brightness = 0.1  # Uniform offset in [-b, b] on the [0, 1] scale.
  config.data.augment.contrast = 0.1  # Uniform gain in [1 - c, 1 + c] around the mean.
  # Stronger augmentation, off at 1 / 0 (the stress test's gamma, blur and noise shifts act
  # the same way: with these on, the stress test partly measures what training saw).
  config.data.augment.crop_area_min = 1.0  # Random resized crop of [a, 1] of the area first.
  config.data.augment.gamma = 0.0  # Gamma exp(u), u uniform in [-g, g] (0.3: 0.74 to 1.35).
  config.data.augment.blur_sigma = 0.0  # Gaussian blur, sigma uniform in [0, s] x width.
  config.data.augment.noise_std = 0.0  # Gaussian noise, std uniform in [0, n].
  # A brightness ramp from top to bottom, offset slope x (row position - 1/2) with slope
  # uniform in [-r, r]: lung fields brighter or darker than the lower film, as framing and
  # exposure vary between acquisitions (docs/results.md, Errors on the external set).
  config.data.augment.intensity_ramp = 0.0

  config.model = model_config(arg.model)

  config.finetune = ml_collections.ConfigDict()
  # Start from another run's weights: WORKDIR[:CHECKPOINT] (latest, best or a step; default
  # latest). Arrays that match this model's are loaded; a head for another number of classes
  # starts fresh. A resumed run resumes its own checkpoints. Empty: train from scratch.
  config.finetune.init_from = ""
  # Train the head only (the backbone's BatchNorm statistics still follow the new data).
  config.finetune.freeze_backbone = False
  config.finetune.backbone_learning_rate_scale = 1.0  # The backbone's learning rate, relative.

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adamw"  # adam, adamw or sgd (with momentum).
  config.optimizer.learning_rate = 1e-3  # Peak learning rate, reached after warmup.
  config.optimizer.schedule = "cosine"  # cosine (decays to 0 at the last step) or constant.
  config.optimizer.warmup_epochs = 1.0  # Linear warmup from 0.
  config.optimizer.weight_decay = 1e-4  # Decoupled for adamw, L2 for adam/sgd; not on biases/BN.
  config.optimizer.momentum = 0.9  # sgd only.
  config.optimizer.nesterov = True  # sgd only.
  config.optimizer.grad_clip_norm = 1.0  # Clip the global gradient norm; 0 disables.

  config.loss = ml_collections.ConfigDict()
  config.loss.name = "cross_entropy"  # One of the losses in xray_jax/losses.py's LOSSES.
  config.loss.focal_gamma = 2.0  # focal: each class term of cross-entropy times (1 - p)^gamma.
  # The target is (1 - s) * one_hot + s / classes (multilabel: (1 - s) * label + s / 2).
  config.loss.label_smoothing = 0.0
  # none, balanced (inverse frequency) or "w0,w1,...". Multilabel: a weight on each
  # finding's positive labels; balanced is n_negative / n_positive of the training labels.
  config.loss.class_weights = "none"
  # Multilabel: a training label of -1 (uncertain, as CheXpert marks them) counts as
  # ignore (missing: no loss), negative or positive. Evaluation always ignores them.
  config.loss.uncertain = "ignore"
  # Mixup: each training image blended with another, weight ~ Beta(a, a), and so is its
  # loss; e.g. 0.2. 0 disables.
  config.loss.mixup_alpha = 0.0

  config.training = ml_collections.ConfigDict()
  config.training.global_batch_size = 64  # Summed over all devices of all hosts.
  config.training.num_epochs = 20.0  # Length of training ...
  config.training.num_train_steps = -1  # ... or this many steps when > 0.
  config.training.log_every_steps = 50  # Train metrics: log line, JSON lines, TensorBoard.
  config.training.eval_every_steps = -1  # Validation; -1: once per epoch.
  config.training.checkpoint_every_steps = -1  # -1: once per epoch; always at the end.
  config.training.keep_checkpoints = 3  # The latest K are kept, plus the best (below).
  # What "best" ranks checkpoints by: SET/METRIC, SET val or a name of data.eval_sets,
  # METRIC auc, accuracy or nll (lower is better); e.g. external/auc.
  config.training.best_metric = "val/auc"
  # A damaged latest checkpoint (its files differ from their digests): true moves it to
  # WORKDIR/checkpoints_damaged/ with a warning and resumes from the newest intact one;
  # false stops with an error that names it.
  config.training.restore_fallback = True
  config.training.eval_batch_size = 128  # Global batch for validation.
  # Exponential moving average of the weights (and BatchNorm statistics), kept in the
  # checkpoints and used by validation, evaluation and predict; e.g. 0.999. 0 disables.
  config.training.ema_decay = 0.0

  config.evaluation = ml_collections.ConfigDict()  # xray_jax.evaluate (checkpoint evaluation).
  # The operating point (decision threshold of two classes, or of each finding with task
  # multilabel): fixed (fixed_threshold, not tuned), or chosen on validation: youden (max
  # sensitivity + specificity), sensitivity (reach target_sensitivity) or robust (max mean
  # sensitivity + specificity over validation clean and under every stress shift; single-label
  # only). fixed 0.5 is the default: judged under shifts held
  # out from the choice, it beat every tuned threshold (docs/results.md); youden was worst.
  config.evaluation.threshold_method = "fixed"
  config.evaluation.fixed_threshold = 0.5  # For threshold_method=fixed.
  config.evaluation.target_sensitivity = 0.95  # For threshold_method=sensitivity.
  # Where the operating point (threshold, temperature) is chosen: val, or a named set of
  # data.eval_sets from the deployment's acquisition. Its own report then adds the figures at
  # thresholds cross-fitted over 5 patient folds: what the choice is worth on new patients.
  config.evaluation.operating_point_split = "val"
  config.evaluation.calibration_bins = 15  # Bins of the reliability diagram and the ECE.
  # Fit a temperature on validation (saved with the operating point, which is then chosen
  # on the scaled probabilities); evaluate and predict apply it. Single-label only.
  config.evaluation.temperature_scaling = False
  # Test-time augmentation in evaluate and predict: probabilities averaged over the image and
  # these views: none, or a list of hflip (mirror), shift (4 moves of 4%), zoom (x1.1).
  config.evaluation.tta = "none"
  # Confidence intervals of binary reports (ROC AUC, accuracy, sensitivity, specificity) and
  # per-finding ones (ROC AUC, sensitivity, specificity): percentile bootstrap over patients
  # (data.group_pattern), else images. 0 disables.
  config.evaluation.bootstrap_resamples = 1000
  config.evaluation.confidence_level = 0.95  # Coverage of those intervals, in (0, 1).

  if arg.runlocal:
    config.data.image_size = min(arg.res, 64)
    config.data.num_workers = 0
    config.model.update(RUNLOCAL_MODEL_FIELDS.get(config_args.model_family(arg.model), {}))
    config.training.global_batch_size = 16
    config.training.num_train_steps = 20
    config.training.log_every_steps = 5
    config.training.eval_every_steps = 10
    config.training.checkpoint_every_steps = 10
    config.training.eval_batch_size = 64
  return config
