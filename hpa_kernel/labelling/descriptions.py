"""One-line reference descriptions of the 19 classes, shown to the labeller beside each cell.

They describe what the protein stain (the green channel) looks like when a cell shows the class,
and what to look for to tell it apart from its neighbours. The other channels are the
nucleus (blue), microtubules (red) and endoplasmic reticulum (yellow).
"""

from __future__ import annotations

from hpa_kernel.classes import class_id

__all__ = ["CLASS_DESCRIPTIONS", "describe"]

CLASS_DESCRIPTIONS: dict[int, str] = {
    0: "Green fills the nucleus (inside the blue area) fairly evenly, sparing the nucleoli; little or none outside it.",
    1: "A thin green ring that outlines the edge of the nucleus, sharper than any signal inside it.",
    2: "A few bright, rounded green blobs inside the nucleus, at the dark holes of the blue DNA stain.",
    3: "Small green dots clustered within the nucleoli: tiny bright points rather than whole filled nucleoli.",
    4: "Many irregular green speckles spread through the nucleus (often 20-50), on a dimmer nuclear background.",
    5: "A handful of distinct round green dots in the nucleus (typically 1-10), smaller and fewer than speckles.",
    6: "A fine green network through the cytoplasm, densest around the nucleus; follows the yellow channel.",
    7: "A compact green cluster of ribbons or dots beside the nucleus, usually on one side only.",
    8: "Green fibres that run through the cytoplasm as a wavy meshwork, often thicker towards the nucleus.",
    9: "Straight green bundles (stress fibres) across the cell and/or a bright rim under the cell edge.",
    10: "A green web of fine filaments radiating from the centre of the cell; overlaps the red channel.",
    11: "Only in dividing cells: a green spindle or bundle between condensed chromosomes (blue), in mitosis.",
    12: "One or two small bright green dots next to the nucleus, where microtubules meet.",
    13: "Green outlines the outer border of the cell, sharp at the edge and dim inside.",
    14: "Green threads or granules through the cytoplasm, thicker and more tubular than the ER network.",
    15: "A single bright, dense green body in the cytoplasm near the nucleus, much brighter than its surroundings.",
    16: "Green fills the whole cytoplasm smoothly and diffusely, without visible structure.",
    17: "Many green dots of varying size scattered in the cytoplasm, not organised into a network.",
    18: "No specific green staining: the cell's green channel is at background level or uninformative.",
}


def describe(name_or_id: str | int) -> str:
    """The reference description of a class given by name or id.

    >>> describe("Negative").startswith("No specific green")
    True
    """
    return CLASS_DESCRIPTIONS[class_id(name_or_id)]

