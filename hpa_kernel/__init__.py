"""hpa-kernel: a kit for the Human Protein Atlas single-cell classification task.

The package is laid out by pipeline stage::

    io            read 4-channel HPA images and the Kaggle folder layout
    synthetic     a seeded, HPA-like synthetic competition for tests and the demo
    segmentation  faithful HPA-Cell-Segmentation (DPN-UNet + label_cell) and a classic fallback
    cells         512x512 cell crops, border/outlier heuristics, the parallel pipeline and cache
    classifier    the EfficientNet-B0 ensemble and its checkpoints
    confidence    cell/image weighting of the final confidences
    rle           the competition's mask encoding
    submission    writing and validating submission.csv
    metric        the organisers' mAP@0.6, box and mask IoU
    training      datasets, samplers, augmentations, losses, training runs
    labelling     the manual relabelling GUI

Importing the package is cheap: no submodule is imported here.
"""

__version__ = "0.1.0"
