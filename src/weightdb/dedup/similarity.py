"""How alike two blocks are, in the three ways the methods compare them."""

import numpy as np


def element_fraction(a: np.ndarray, b: np.ndarray, tolerance: float) -> float:
    """netsDB: the fraction of elements that differ by at most an absolute ``tolerance``.

    Blind to scale: with tolerance 0.01, two blocks of values around 1e-3 always match.
    """
    return float(np.count_nonzero(np.abs(a - b) <= tolerance)) / a.size


def relative_distance(a: np.ndarray, b: np.ndarray) -> float:
    """weightdb: ||a - b|| / max(||a||, ||b||), so small and large layers are judged alike."""
    scale = max(float(np.linalg.norm(a)), float(np.linalg.norm(b)), 1e-30)
    return float(np.linalg.norm(a - b)) / scale


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """MISTIQUE: Jaccard similarity of the sets of discretised values of two blocks."""
    sa, sb = np.unique(a), np.unique(b)
    union = np.union1d(sa, sb).size
    return np.intersect1d(sa, sb, assume_unique=True).size / union if union else 1.0
