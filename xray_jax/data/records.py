"""The unit every data source produces and the input pipeline consumes."""

# One labelled image, a plain dict (grain sources hold these): "path" (a file, or a name
# such as chest_xray_pneumonia/ID for sources that carry pixels), "label" (int: the class;
# or, for config.task=multilabel, float32 [K]: each finding 1, 0, -1 uncertain or NaN
# missing; see xray_jax/labels.py) and, for npz and TFDS sources, "image" (the pixels, or a
# lazy TfdsImage).
Record = dict
