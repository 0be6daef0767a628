"""Datasets of labelled X-ray images: discovery, splits, decoding and augmentation."""
