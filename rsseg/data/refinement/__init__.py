"""IDGBR's refinement inputs: coarse label maps written by a trained model and read back beside each
sample (``coarse``), and random label maps for pre-training the refiner (``random_labels``)."""
