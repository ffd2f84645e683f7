"""Framework-free resampling weights shared by the backends (position-embedding interpolation)."""
from __future__ import annotations

import numpy as np

__all__ = ["bicubic_matrix"]


def bicubic_matrix(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
    """(n_out, n_in) weights of PyTorch's bicubic resize (align_corners=False, A=-0.75, edge clamp).

    ``m @ x`` resizes a length-``n_in`` axis to ``n_out``; applied along both axes it reproduces
    ``torch.nn.functional.interpolate(mode="bicubic")``, which HF uses for ``interpolate_pos_encoding``.
    """
    def cubic(x: float) -> float:
        x = abs(x)
        if x <= 1:
            return ((a + 2) * x - (a + 3)) * x * x + 1
        if x < 2:
            return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
        return 0.0

    m = np.zeros((n_out, n_in), np.float64)
    scale = n_in / n_out
    for i in range(n_out):
        src = (i + 0.5) * scale - 0.5
        base = int(np.floor(src))
        t = src - base
        for k in range(-1, 3):
            m[i, min(max(base + k, 0), n_in - 1)] += cubic(k - t)
    return m
