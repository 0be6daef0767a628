"""The files and folders of a training workdir, named in one place."""

CONFIG = "config.json"  # The resolved config the run trains with.
CLASSES = "classes.json"  # Class names in label order.
RUN = "run.json"  # What later jobs need to know of the run: its length in steps.
SPLIT = "data_split.json"  # The validation images carved from train, and their patients.
METRICS = "metrics.jsonl"  # Train and validation metrics, one JSON object per line.
TENSORBOARD = "tensorboard"  # The same metrics as TensorBoard events.
CHECKPOINTS = "checkpoints"  # Orbax checkpoints, one folder per step.
DAMAGED_CHECKPOINTS = "checkpoints_damaged"  # Damaged checkpoints set aside, never deleted.
EVAL = "eval"  # Reports, predictions and figures of evaluation jobs.
LOCK = "trainer.lock"  # Held by the running trainer.
