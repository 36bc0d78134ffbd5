"""Colour maps shared by the views: diverging (centred on 0) for activations."""
from __future__ import annotations

import numpy as np
import pyqtgraph as pg

# blue - white - red, as in most activation plots (ColorBrewer RdBu, reversed)
_STOPS = [(5, 48, 97), (33, 102, 172), (146, 197, 222), (247, 247, 247), (244, 165, 130), (178, 24, 43), (103, 0, 31)]
DIVERGING = pg.ColorMap(np.linspace(0.0, 1.0, len(_STOPS)), [(*c, 255) for c in _STOPS])
_LUT = DIVERGING.getLookupTable(0.0, 1.0, 256, alpha=False)
# white - red, for values that are never negative (gates, probabilities, attention)
_SEQ_STOPS = [(255, 255, 255), (252, 187, 161), (251, 106, 74), (203, 24, 29), (103, 0, 13)]
SEQUENTIAL = pg.ColorMap(np.linspace(0.0, 1.0, len(_SEQ_STOPS)), [(*c, 255) for c in _SEQ_STOPS])
_SEQ_LUT = SEQUENTIAL.getLookupTable(0.0, 1.0, 256, alpha=False)


#: the colour range is a percentile of at most this many values (an even subsample of larger
#: arrays: the 99.5th percentile of 200k values is within a hair of the whole array's)
LEVEL_SAMPLE = 200_000


def _finite_sample(values: np.ndarray) -> np.ndarray:
    flat = values.reshape(-1)
    if flat.size > LEVEL_SAMPLE:
        flat = flat[:: flat.size // LEVEL_SAMPLE + 1]
    return flat[np.isfinite(flat)]


def color_scale(values: np.ndarray):
    """(low, high, colour map) for showing ``values``: a symmetric range on the diverging map
    when they take both signs, 0..high on the white-red map when they are never negative."""
    finite = _finite_sample(values)
    if finite.size and finite.min() >= 0 and not np.nanmin(values) < 0:
        high = float(np.percentile(finite, 99.5)) if finite.size > 200 else float(finite.max())
        return 0.0, (high if high > 0 else 1.0), SEQUENTIAL
    level = symmetric_level(values)
    return -level, level, DIVERGING


def rgb_scaled(values: np.ndarray, low: float, high: float, cmap) -> np.ndarray:
    """uint8 RGB per value on ``cmap`` between ``low`` and ``high``."""
    lut = _SEQ_LUT if cmap is SEQUENTIAL else _LUT
    x = np.clip((np.nan_to_num(values) - low) / (high - low), 0.0, 1.0)
    return lut[(x * 255).astype(int)]


def symmetric_level(values: np.ndarray) -> float:
    """A symmetric colour range ±L that ignores the most extreme 0.5% of values."""
    finite = np.abs(_finite_sample(values))
    if finite.size == 0:
        return 1.0
    level = float(np.percentile(finite, 99.5)) if finite.size > 200 else float(finite.max())
    return level if level > 0 else 1.0


def relative_luminance(rgb: np.ndarray) -> np.ndarray:
    """WCAG relative luminance (0 black .. 1 white) of uint8 sRGB colours [..., 3]."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return linear @ np.array([0.2126, 0.7152, 0.0722])


#: below this background luminance white text contrasts more than black (WCAG contrast ratios
#: (L + 0.05) / 0.05 for black and 1.05 / (L + 0.05) for white are equal at L = 0.179)
LIGHT_TEXT_BELOW = 0.179


def light_text(rgb: np.ndarray) -> np.ndarray:
    """Whether text on each background colour [..., 3] should be white (else black)."""
    return relative_luminance(rgb) < LIGHT_TEXT_BELOW
