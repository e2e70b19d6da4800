"""Normalisation constants shared by the CPU transforms (imagenet.py) and the device pipeline (gpu_decode.py).

Kept apart so that neither of those modules has to import the other.
"""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
