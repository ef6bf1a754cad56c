"""Images from a folder tree: subfolders are classes, every image becomes (pixel centre, colour)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from inrflow.model import grid_coords

from .base import CoordinateDataset

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolderDataset",
    "bilinear_at",
    "center_crop_resize",
    "continuous_coords",
    "decode_image",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm")


# Pillow's integer grey modes: 16-bit PNG/TIFF greys open as "I;16*" (or "I" in older Pillow).
# Converting them to "L" clips every value above 255 to white instead of scaling.
_WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def decode_image(img: Image.Image, channels: int) -> tuple[Image.Image, float]:
    """``(image, full-scale value)``: 8-bit ``L``/``RGB`` images (full scale 255), or for 16-bit
    greys a float ``F`` image of the raw values with full scale 65535 (the true bit depth, so a
    0..65535 ramp maps to 0..1 rather than being clipped). A 32-bit ``I`` image whose values
    exceed 16 bits is scaled by 2**31 - 1. ``channels`` is 1 or 3; a grey ``F`` image stays one
    channel (repeat it for RGB)."""
    if img.mode in _WIDE_GREY_MODES:
        wide = img.convert("F")
        lo, hi = wide.getextrema()
        full = 65535.0 if img.mode != "I" or (lo >= 0 and hi <= 65535) else float(2**31 - 1)
        return wide, full
    return img.convert("RGB" if channels == 3 else "L"), 255.0


def center_crop_resize(img: Image.Image, resolution: int) -> Image.Image:
    """Resize the shorter side to ``resolution`` and take the central square (ADM's recipe).

    Large reductions first halve with a box filter, then resample bicubically, which avoids the
    aliasing of a single bicubic step from a much larger image.
    """
    while min(img.size) >= 2 * resolution:
        img = img.resize(tuple(s // 2 for s in img.size), resample=Image.BOX)
    scale = resolution / min(img.size)
    img = img.resize(tuple(max(resolution, round(s * scale)) for s in img.size), Image.BICUBIC)
    left = (img.size[0] - resolution) // 2
    top = (img.size[1] - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))


class ImageFolderDataset(CoordinateDataset):
    """All images under ``root``; the first-level subfolders name the classes.

    Images directly in ``root`` (no subfolders) form one unconditional set. Each image is
    converted to RGB (or greyscale with ``channels=1``), resized and centre-cropped to
    ``resolution``, optionally flipped horizontally (probability 1/2, from the item's seed) and
    mapped to [-1, 1]; coordinates are pixel centres in [0, 1]^2, row-major (channel 0 = row).

    With ``field_resolution`` the image is read at that (larger) side instead and an item holds
    values at continuous coordinates: one uniform point in each cell of the ``resolution`` grid
    plus as many uniform points anywhere, each valued by bilinear interpolation between the
    pixel centres of the larger image. A model trained at the pixel centres alone is never told
    what lies between them, so sampled on a finer grid it returns an accidental interpolation;
    trained on such items it learns the image as a function of position, which is what
    sampling above the training resolution asks of it. ``shape`` stays the ``resolution``
    grid: the density of an item and the grid the model samples at by default.
    """

    domain = "image"
    coord_dim = 2

    def __init__(
        self,
        root: str | os.PathLike,
        resolution: int,
        hflip: bool = True,
        channels: int = 3,
        field_resolution: int | None = None,
    ) -> None:
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
        if not root.is_dir():
            raise NotADirectoryError(f"{str(root)!r} is not a directory of images")
        if resolution < 1:
            raise ValueError(f"resolution must be >= 1, got {resolution}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if field_resolution is not None and field_resolution < resolution:
            raise ValueError(
                f"field_resolution ({field_resolution}) must be at least the resolution "
                f"({resolution}): the values between pixel centres come from the larger image"
            )
        self.root, self.resolution, self.hflip = root, resolution, hflip
        self.field_resolution = field_resolution
        self.value_dim = channels
        self.shape = (resolution, resolution)
        classes = sorted(
            d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
        )
        files: list[tuple[str, int]] = []
        for label, name in enumerate(classes):
            files += [(p, label) for p in _walk_images(root / name)]
        loose = [(str(p), 0) for p in sorted(root.iterdir()) if _is_image(p)]
        if classes and loose:
            raise ValueError(
                f"{root} mixes class subfolders with {len(loose)} loose images; move the images "
                "into subfolders (one per class) or remove the subfolders"
            )
        files += loose
        if not files:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {str(root)!r}")
        self.files = files
        with_images = sorted({label for _, label in files})
        self.class_names = tuple(classes) if classes else ()
        self.num_classes = len(classes) if len(with_images) > 1 else 0
        if classes and len(with_images) < len(classes):
            empty = [classes[i] for i in range(len(classes)) if i not in set(with_images)]
            raise ValueError(f"class folders without images under {root}: {empty[:5]}")
        self._coords = grid_coords(self.shape)

    def __len__(self) -> int:
        return len(self.files)

    def describe(self, index: int) -> str:
        return f"image {self.files[index][0]!r}"

    def load(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        path, label = self.files[index]
        side = self.field_resolution or self.resolution
        with Image.open(path) as img:
            img, full = decode_image(img, self.value_dim)
            img = center_crop_resize(img, side)
        arr = np.asarray(img, dtype=np.float32).reshape(side, side, -1)
        if arr.shape[-1] != self.value_dim:  # a 16-bit grey image in an RGB dataset
            arr = np.repeat(arr, self.value_dim, axis=-1)
        if self.hflip and rng.random() < 0.5:
            arr = arr[:, ::-1]
        # the 8-bit path exactly as before; wider greys scaled by their full-scale value
        arr = arr / 127.5 - 1.0 if full == 255.0 else np.clip(arr / full, 0, 1) * 2 - 1
        if self.field_resolution is None:
            values, coords = self._tensor(arr.reshape(-1, self.value_dim)), self._coords
        else:
            coords = continuous_coords(self.resolution, rng)
            values = bilinear_at(self._tensor(arr), coords)
        return {"values": values, "coords": coords, "label": torch.tensor(label)}


def continuous_coords(resolution: int, rng: np.random.Generator) -> torch.Tensor:
    """``[2 resolution^2, 2]`` points in [0, 1]^2: one uniform in each cell of the
    ``resolution`` grid (row-major, so the first half covers the image evenly), then as many
    uniform anywhere (so no position is tied to a cell's layout)."""
    cells = grid_coords((resolution, resolution)).numpy()
    jittered = cells + rng.uniform(-0.5, 0.5, cells.shape) / resolution
    anywhere = rng.uniform(0.0, 1.0, cells.shape)
    return torch.from_numpy(np.concatenate([jittered, anywhere]).astype(np.float32))


def bilinear_at(image: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Values ``[N, c]`` of ``image`` ``[H, W, c]`` at ``coords`` ``[N, 2]`` in [0, 1]^2 (row,
    column): bilinear between pixel centres, the edge pixels' values beyond the outer centres."""
    grid = (coords.flip(-1) * 2 - 1).view(1, 1, -1, 2)  # grid_sample wants (x = column, y = row)
    out = F.grid_sample(
        image.permute(2, 0, 1).unsqueeze(0),
        grid,
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )
    return out[0, :, 0].T.contiguous()


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _walk_images(folder: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        out += [
            os.path.join(dirpath, f)
            for f in sorted(filenames)
            if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")
        ]
    return out
