"""Segmentations of every quality for the QC predictor: corruptions, classical method, dataset."""
