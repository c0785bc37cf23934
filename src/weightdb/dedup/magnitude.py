"""How much a replacement matters: the order in which methods visit blocks.

netsDB scores a block by the 3rd quartile of its signed values, normalised by the layer's
min-max range, minus the layer's element count so that large layers come first; it visits the
lowest scores first. Signed values make a block of large negative weights look unimportant.
weightdb instead estimates the damage of a replacement from absolute values: the RMS change it
makes, relative to the layer's mean absolute weight.
"""

import numpy as np


def netsdb_score(block: np.ndarray, layer_min: float, layer_max: float, layer_size: int) -> float:
    spread = layer_max - layer_min
    q3 = float(np.percentile(block, 75))
    return (q3 - layer_min) / (spread if spread > 0 else 1.0) - layer_size


def relative_damage(block: np.ndarray, representative: np.ndarray, layer_mean_abs: float) -> float:
    rms = float(np.sqrt(np.mean((block - representative) ** 2)))
    return rms / max(layer_mean_abs, 1e-30)
