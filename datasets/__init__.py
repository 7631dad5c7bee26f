"""Datasets: the on-disk store, ECG / CMR / paired ECG-CMR datasets, augmentations, demo data and ingestion."""
