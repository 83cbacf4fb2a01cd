"""Brute-force references shared by the Laparoflow-SSL view tests (test_views.py,
test_view_geometry.py)."""

import numpy as np


def map_points(affine, pts):
    """NumPy: (B, 2, 3) affine applied to (B, N, 2) points."""
    return np.einsum("bij,bnj->bni", affine[:, :, :2], pts) + affine[:, None, :, 2]


def support_valid(valid, x, y, r):
    """Brute force of view_geometry.cell_validity: (B, H, W) mask, integer centres x, y (hr, wr) →
    (B, hr, wr), True where every pixel within Chebyshev distance r of the centre that lies
    in the image is valid (and the centre itself lies in it)."""
    b, hh, ww = valid.shape
    out = np.zeros((b,) + x.shape, bool)
    for idx in np.ndindex(x.shape):
        cx, cy = int(x[idx]), int(y[idx])
        if not (0 <= cx < ww and 0 <= cy < hh):
            continue
        patch = valid[:, max(cy - r, 0):cy + r + 1, max(cx - r, 0):cx + r + 1]
        out[(slice(None),) + idx] = patch.reshape(b, -1).all(-1)
    return out
