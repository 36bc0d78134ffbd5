"""Colour maps shared by the views: diverging (centred on 0) for activations."""
from __future__ import annotations

import numpy as np
import pyqtgraph as pg

# blue - white - red, as in most activation plots (ColorBrewer RdBu, reversed)
_STOPS = [(5, 48, 97), (33, 102, 172), (146, 197, 222), (247, 247, 247), (244, 165, 130), (178, 24, 43), (103, 0, 31)]
DIVERGING = pg.ColorMap(np.linspace(0.0, 1.0, len(_STOPS)), [(*c, 255) for c in _STOPS])
_LUT = DIVERGING.getLookupTable(0.0, 1.0, 256, alpha=False)


def symmetric_level(values: np.ndarray) -> float:
    """A symmetric colour range ±L that ignores the most extreme 0.5% of values."""
    finite = np.abs(values[np.isfinite(values)])
    if finite.size == 0:
        return 1.0
    level = float(np.percentile(finite, 99.5)) if finite.size > 200 else float(finite.max())
    return level if level > 0 else 1.0


def rgb_for(values: np.ndarray, level: float) -> np.ndarray:
    """uint8 RGB per value on the diverging map, with ±level at the ends."""
    x = np.clip((np.nan_to_num(values) / level + 1.0) / 2.0, 0.0, 1.0)
    return _LUT[(x * 255).astype(int)]

