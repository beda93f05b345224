"""SDCI (paper 002): training-free open-vocabulary segmentation with CLIP and DINO — CAF, BCDR and CSCP."""
