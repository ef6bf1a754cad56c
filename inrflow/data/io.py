"""Writing generated samples: PNG grids of images, PLY files of point clouds."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = [
    "image_grid",
    "save_image_grid",
    "save_ply",
    "save_point_cloud_grid",
    "values_to_images",
]


def values_to_images(values: torch.Tensor, shape: Sequence[int]) -> np.ndarray:
    """``[S, H*W, c]`` values in [-1, 1] (row-major pixels) -> uint8 ``[S, H, W, c]``."""
    h, w = shape
    x = values.detach().float().cpu().reshape(values.shape[0], h, w, -1)
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def image_grid(images: np.ndarray, nrow: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile uint8 images ``[S, H, W, c]`` into one ``[rows*(H+pad)+pad, ...]`` image."""
    s, h, w, c = images.shape
    nrow = nrow or math.ceil(math.sqrt(s))
    rows = math.ceil(s / nrow)
    grid = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) :][:, :w] = img
    return grid


def save_image_grid(
    values: torch.Tensor,
    shape: Sequence[int],
    path: str | os.PathLike,
    nrow: int | None = None,
    scale: int = 1,
) -> Path:
    """Write samples ``[S, H*W, c]`` as one PNG grid (``scale``x nearest upsampling)."""
    grid = image_grid(values_to_images(values, shape), nrow)
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def save_ply(points: torch.Tensor | np.ndarray, path: str | os.PathLike) -> Path:
    """Write one point cloud ``[N, 3]`` as a binary little-endian PLY file."""
    pts = np.asarray(points.detach().float().cpu() if torch.is_tensor(points) else points)
    pts = np.ascontiguousarray(pts[:, :3], dtype="<f4")
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {len(pts)}\nproperty float x\nproperty float y\nproperty float z\n"
        "end_header\n"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(pts.tobytes())
    return path


def save_point_cloud_grid(
    rows: Sequence[Sequence[torch.Tensor | np.ndarray]],
    path: str | os.PathLike,
    row_names: Sequence[str] | None = None,
    real_columns: int = 0,
    cell_inches: float = 1.6,
) -> Path | None:
    """Point clouds ``[N, 3]`` as a PNG of 3-D scatter plots, one row per entry of ``rows``.

    The first ``real_columns`` clouds of each row are titled "real", the others "sample", so a
    row shows generated shapes next to real ones of the same class. All cells share the view
    (elevation 20, azimuth 35) and the [-1, 1] cube. Returns None when matplotlib is missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        import warnings

        warnings.warn("matplotlib is not installed: no point-cloud picture", stacklevel=2)
        return None
    if not rows or not all(rows):
        raise ValueError("save_point_cloud_grid needs at least one cloud in every row")
    if row_names is not None and len(row_names) != len(rows):
        raise ValueError(f"{len(row_names)} row names for {len(rows)} rows")
    ncol = max(len(r) for r in rows)
    fig = plt.figure(figsize=(cell_inches * ncol, cell_inches * len(rows)), dpi=80)
    for i, row in enumerate(rows):
        for j, cloud in enumerate(row):
            pts = np.asarray(cloud.detach().float().cpu() if torch.is_tensor(cloud) else cloud)
            ax = fig.add_subplot(len(rows), ncol, i * ncol + j + 1, projection="3d")
            ax.scatter(pts[:, 0], pts[:, 1], pts[:, 2], s=1.0, c=pts[:, 2], cmap="viridis")
            ax.set_xlim(-1, 1), ax.set_ylim(-1, 1), ax.set_zlim(-1, 1)
            ax.set_box_aspect((1, 1, 1))
            ax.view_init(elev=20, azim=35)
            ax.set_axis_off()
            title = "real" if j < real_columns else "sample"
            if j == 0 and row_names is not None:
                title = f"{row_names[i]}: {title}"
            ax.set_title(title, fontsize=7, pad=0)
    fig.subplots_adjust(left=0, right=1, bottom=0, top=0.97, wspace=0, hspace=0.1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    buf.seek(0)
    # a 64-colour palette: the picture is dots on white, and a fifth the size of full RGB
    Image.open(buf).convert("RGB").quantize(64).save(path, optimize=True)
    return path
