"""The unit every data source produces and the input pipeline consumes."""

# One labelled image, a plain dict (grain sources hold these): "path" (a file, or a name
# such as chest_xray_pneumonia/ID for sources that carry pixels), "label" (int) and, for
# npz and TFDS sources, "image" (the pixels, or a lazy TfdsImage).
Record = dict
