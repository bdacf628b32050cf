"""Label rasters for semantic synthesis: the class mapping, the plan-time scan, and the model's
conditioning of a box of labels.

A label raster holds integer values (land-cover codes, say); ``--classes FILE`` (YAML or JSON)
maps each to one of the model's class ids, or to ``null`` for "no class" (the output px becomes
nodata, as for the raster's own nodata)::

    11: 177      # open water -> the model's class 177
    21: 123
    0: null      # unclassified: left empty

Without a file the raster values are the model's class ids. The whole raster is scanned once when
planning, so a value without a class is refused before anything runs, with every such value listed.

The conditioning is CompVis' SpatialRescaler (one-hot labels -> ``rescale-stages`` x resize by
``multiplier`` -> learned 1x1 conv). Both resizing and the 1x1 conv are linear, so the conv is
applied first, as a lookup of each class's vector: 3 channels at label resolution instead of 182
one-hot channels, the same result to float rounding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError, first_line
from .plan import LabelPlan
from .raster import RasterInfo, valid_mask

SCAN_ROWS = 1024  # label rows read at a time when scanning the whole raster
LISTED = 20  # unmapped values named in an error


def check_label_raster(info: RasterInfo, bands: tuple[int, ...]) -> None:
    if len(bands) != 1:
        raise InputError(f"{info.path}: {len(bands)} bands selected ({','.join(map(str, bands))}); "
                         "expected one band of class ids (choose it with -b N)")
    if not np.issubdtype(np.dtype(info.dtype), np.integer):
        raise InputError(f"{info.path}: band {bands[0]} is {info.dtype}; expected an integer raster "
                         "of class ids")


def read_classes(path) -> dict[int, int | None]:
    """The mapping in ``path``: integer raster values to integer class ids or null."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())  # YAML is a superset of JSON
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: not a readable YAML or JSON file ({first_line(exc)})") from None
    if not isinstance(data, dict) or not data:
        raise InputError(f"{path}: {type(data).__name__}; expected a mapping of raster values to "
                         "class ids, e.g. {11: 177, 0: null}")
    mapping = {}
    for key, value in data.items():
        raster_value = _as_int(key)
        if raster_value is None:
            raise InputError(f"{path}: key {key!r}: expected an integer raster value")
        if value is not None and _as_int(value) is None:
            raise InputError(f"{path}: {key}: {value!r}: expected an integer class id or null")
        mapping[raster_value] = None if value is None else _as_int(value)
    return mapping


def _as_int(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def scan_values(info: RasterInfo, band: int) -> dict[int, int]:
    """How many px hold each value of ``band`` (nodata excluded), reading SCAN_ROWS rows at a time."""
    import rasterio
    from rasterio.windows import Window

    counts: dict[int, int] = {}
    with rasterio.open(info.path) as ds:
        for top in range(0, info.height, SCAN_ROWS):
            rows = min(SCAN_ROWS, info.height - top)
            values = ds.read(band, window=Window(0, top, info.width, rows))
            values = values[valid_mask(values[None], info.nodata)[0]]
            for value, count in zip(*_value_counts(values)):
                counts[int(value)] = counts.get(int(value), 0) + int(count)
    return counts


def _value_counts(values: np.ndarray):
    if values.dtype.itemsize <= 2:  # a histogram is much faster than sorting
        low = int(np.iinfo(values.dtype).min)
        shifted = values if low == 0 else values.astype(np.int32) - low  # no copy for uint8/16
        counts = np.bincount(shifted.ravel())
        present = np.flatnonzero(counts)
        return present + low, counts[present]
    return np.unique(values, return_counts=True)


def plan_labels(info: RasterInfo, band: int, classes: int, classes_file=None) -> LabelPlan:
    """Scan the raster and map every value found; refuse values without a class."""
    counts = scan_values(info, band)
    source = str(classes_file) if classes_file else f"{info.path} (values as class ids)"
    table = read_classes(classes_file) if classes_file else {v: v for v in counts}
    unmapped = sorted(v for v in counts if v not in table)
    if unmapped:
        listed = ", ".join(f"{v} ({counts[v]} px)" for v in unmapped[:LISTED])
        more = f" and {len(unmapped) - LISTED} more" if len(unmapped) > LISTED else ""
        raise InputError(f"{info.path}: {len(unmapped)} value(s) have no class in "
                         f"{classes_file}: {listed}{more}; add them to the file (null = no class)")
    bad = sorted(v for v in counts if table[v] is not None and not 0 <= table[v] < classes)
    if bad:
        listed = ", ".join(f"{v} -> {table[v]}" for v in bad[:LISTED])
        raise InputError(f"{source}: class id(s) out of range: {listed}; the model has classes "
                         f"0..{classes - 1}")
    no_class = sum(n for v, n in counts.items() if table[v] is None)
    labelled = sum(counts.values()) - no_class
    return LabelPlan(classes_file=str(Path(classes_file).absolute()) if classes_file else None,
                     classes=classes, mapping=tuple(sorted((v, table[v]) for v in counts)),
                     labelled_px=labelled, unlabelled_px=info.width * info.height - labelled)


class LabelConditioner:
    """The model's conditioning of boxes of the label raster: value -> class -> the rescaler's
    vector (a lookup), then the card's resizing stages."""

    def __init__(self, labels: LabelPlan, nodata, weight: np.ndarray, stages: int,
                 multiplier: float, method: str):
        vectors = weight[:, :, 0, 0].T.astype(np.float32)  # (classes, out)
        self.values = np.array([value for value, _ in labels.mapping], dtype=np.int64)
        # one row per mapped value, and a last row of zeros for "no class"
        rows = [vectors[cls] if cls is not None else np.zeros(vectors.shape[1], np.float32)
                for _, cls in labels.mapping]
        self.rows = np.stack(rows + [np.zeros(vectors.shape[1], np.float32)])
        self.row_has_class = np.array([cls is not None for _, cls in labels.mapping] + [False])
        self.nodata = nodata
        self.stages, self.multiplier, self.method = stages, multiplier, method

    def classified(self, labels: np.ndarray) -> np.ndarray:
        """(1, h, w) labels -> (h, w) row index into ``rows`` (the last: no class)."""
        values = labels[0].astype(np.int64)
        index = np.searchsorted(self.values, values).clip(0, len(self.values) - 1)
        known = (self.values[index] == values) & valid_mask(labels, self.nodata)[0]
        return np.where(known, index, len(self.values))

    def has_class(self, labels: np.ndarray) -> np.ndarray:
        """(1, h, w) labels -> (h, w) True where the px has a class (the output has data there)."""
        return self.row_has_class[self.classified(labels)]

    def condition(self, labels: np.ndarray) -> np.ndarray:
        """(1, H, W) labels -> (out, H * m^stages, W * m^stages) float32 conditioning."""
        import torch
        import torch.nn.functional as F

        vectors = self.rows[self.classified(labels)]  # (H, W, out)
        tensor = torch.from_numpy(np.ascontiguousarray(vectors.transpose(2, 0, 1)))[None]
        for _ in range(self.stages):
            tensor = F.interpolate(tensor, scale_factor=self.multiplier, mode=self.method)
        return tensor[0].numpy()

    def margin(self) -> int:
        """Latent px of label context each side that the resizing stages read (0 for the 2x2
        means of bilinear or area at 0.5; a safe 2 for wider kernels)."""
        return 0 if self.method in ("bilinear", "area") and self.multiplier == 0.5 else 2

