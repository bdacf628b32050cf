"""Quality checks of outputs: the seam report and its heat map (``tiler qa``)."""

from tiler.errors import NotATilerOutput
from tiler.quality.heatmap import ratio_colours, render_heatmap, write_heatmap
from tiler.quality.outputs import load_plan
from tiler.quality.seams import KINDS, SeamGeometry, SeamReport, Segment, seam_report

__all__ = [
    "KINDS",
    "NotATilerOutput",
    "SeamGeometry",
    "SeamReport",
    "Segment",
    "load_plan",
    "ratio_colours",
    "render_heatmap",
    "seam_report",
    "write_heatmap",
]
