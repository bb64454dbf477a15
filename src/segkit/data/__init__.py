"""Datasets, label tables, transforms and the one SegmentationDataModule."""
