"""Datasets of labelled X-ray images: discovery, splits, decoding and augmentation (on the
host, or inside the train step: `device_augment`), and the shared cache of decoded training
images (`image_cache`)."""
