"""Image sets for the metrics: reading folders and arrays without re-encoding, and the FID family.

Images enter as tensors/arrays (``[N, C, H, W]``, ``[N, H, W, C]`` or grey ``[N, H, W]``; uint8 or
float) or as paths: a folder of image files (PNG, BMP, TIFF, WebP, or JPEG as they are, decoded
once and never written again) or of ``.npy``/``.npz``/``.pt`` arrays, or one such array file.
Nothing is saved to a lossy format on the way (the authors' public evaluation code writes every
reference and sample image as a JPEG before computing FID, which shifts the score). Folders are
read lazily, ``batch_size`` images at a time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from inrflow.metrics._utils import default_device
from inrflow.metrics.frechet import (
    FeatureStats,
    frechet_distance,
    inception_score,
    kid,
    precision_recall,
)
from inrflow.metrics.inception import InceptionFeatureExtractor, inception_extractor

__all__ = [
    "ARRAY_SUFFIXES",
    "IMAGE_SUFFIXES",
    "ImageSource",
    "compute_image_metrics",
    "count_images",
    "infer_value_range",
    "iter_image_batches",
    "load_array_file",
    "load_images",
    "to_unit_float",
    "upsampling_residual",
]

IMAGE_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".webp", ".jpg", ".jpeg", ".ppm", ".pgm")
ARRAY_SUFFIXES = (".npy", ".npz", ".pt", ".pth")
_ARRAY_KEYS = ("images", "samples", "x", "data", "arr_0")

ImageSource = torch.Tensor | np.ndarray | str | os.PathLike


# ------------------------------------------------------------------------------------------------
# Layout and value range


def _to_nchw(x: torch.Tensor) -> torch.Tensor:
    """``[N, H, W]`` / ``[N, H, W, C]`` / ``[N, C, H, W]`` -> ``[N, C, H, W]`` with C in {1, 3}."""
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4:
        raise ValueError(f"images must be [N, H, W], [N, H, W, C] or [N, C, H, W]; got {x.shape}")
    if x.shape[1] not in (1, 3, 4) and x.shape[-1] in (1, 3, 4):
        x = x.permute(0, 3, 1, 2)
    if x.shape[1] == 4:  # RGBA: drop alpha
        x = x[:, :3]
    if x.shape[1] not in (1, 3):
        raise ValueError(f"images need 1, 3 or 4 channels; got shape {tuple(x.shape)}")
    return x


def infer_value_range(x: torch.Tensor) -> tuple[float, float]:
    """Guess the value range of an image batch: uint8 -> [0, 255]; floats with negatives ->
    [-1, 1] (inrflow's image values); floats above 1.5 -> [0, 255]; else [0, 1]."""
    if x.dtype == torch.uint8:
        return (0.0, 255.0)
    if x.numel() == 0:
        return (0.0, 1.0)
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-3:
        return (-1.0, 1.0)
    if hi > 1.5:
        return (0.0, 255.0)
    return (0.0, 1.0)


def to_unit_float(
    images: torch.Tensor | np.ndarray, value_range: Sequence[float] | None = None
) -> torch.Tensor:
    """Images in any supported layout -> float32 ``[N, C, H, W]`` in [0, 1] (clamped).

    ``value_range`` ``(lo, hi)`` maps lo -> 0 and hi -> 1; None infers it
    (:func:`infer_value_range`).
    """
    x = torch.as_tensor(images)
    x = _to_nchw(x)
    lo, hi = value_range if value_range is not None else infer_value_range(x)
    if not hi > lo:
        raise ValueError(f"value_range must have hi > lo, got {(lo, hi)}")
    return ((x.float() - lo) / (hi - lo)).clamp_(0.0, 1.0)


def upsampling_residual(
    images: torch.Tensor | np.ndarray,
    base: int | Sequence[int],
    value_range: Sequence[float] | None = None,
) -> float:
    """RMS of ``x - bicubic(area(x, base))`` over images larger than ``base`` (one side or
    ``(H, W)``), values mapped to [0, 1]: what an image holds beyond its ``base`` resolution.

    For samples generated above the training resolution this measures added detail or pixel
    noise ("speckle"): independent pixel noise of std ``s`` adds about ``s``, while a smooth
    upsampling of a ``base`` image scores near 0 (not exactly: area averaging does not invert
    bicubic interpolation).
    """
    x = to_unit_float(images, value_range).double()
    x = x.mean(1, keepdim=True) if x.shape[1] == 3 else x
    bh, bw = (base, base) if isinstance(base, int) else (int(base[0]), int(base[1]))
    h, w = x.shape[-2:]
    if h < bh or w < bw:
        raise ValueError(f"images must be at least {bh} x {bw}, got {h} x {w}")
    coarse = torch.nn.functional.adaptive_avg_pool2d(x, (bh, bw))
    smooth = torch.nn.functional.interpolate(
        coarse, size=(h, w), mode="bicubic", align_corners=False
    )
    return float((x - smooth).pow(2).mean().sqrt())


# ------------------------------------------------------------------------------------------------
# Reading


def _pick_array(obj: object, where: str) -> np.ndarray | torch.Tensor:
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return obj
    if isinstance(obj, dict) or hasattr(obj, "files"):
        keys = list(obj.files) if hasattr(obj, "files") else list(obj)  # type: ignore[union-attr]
        for key in (*_ARRAY_KEYS, *keys):
            if key in keys:
                val = obj[key]  # type: ignore[index]
                if isinstance(val, (np.ndarray, torch.Tensor)):
                    return val
    raise ValueError(f"{where}: no array found (looked for keys {list(_ARRAY_KEYS)})")


def load_array_file(path: str | os.PathLike) -> torch.Tensor:
    """The array in a ``.npy``, ``.npz`` (key images/samples/x/data/arr_0 or the first) or
    ``.pt`` file (a tensor, or a dict with one of those keys), as a tensor (dtype kept)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".npy":
        arr = np.load(p, allow_pickle=False)
    elif suffix == ".npz":
        with np.load(p, allow_pickle=False) as npz:
            arr = np.asarray(_pick_array(npz, str(p)))
    elif suffix in (".pt", ".pth"):
        arr = _pick_array(torch.load(p, map_location="cpu", weights_only=True), str(p))
    else:
        raise ValueError(f"{p}: not an array file ({', '.join(ARRAY_SUFFIXES)})")
    return torch.as_tensor(np.ascontiguousarray(arr) if isinstance(arr, np.ndarray) else arr)


def _read_image_file(path: Path) -> torch.Tensor:
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - Pillow is in the [eval] and [test] extras
        raise ImportError("reading image files needs Pillow: pip install 'inrflow[eval]'") from exc
    from inrflow.data.images import decode_image

    with Image.open(path) as im:
        if im.mode in ("L", "RGB"):
            arr = np.array(im)  # a writable copy
        else:  # 16-bit greys are scaled by their bit depth (not clipped), the rest made RGB
            im, full = decode_image(im, 3)
            arr = np.array(im)
            if full != 255.0:
                arr = (np.clip(arr.astype(np.float64) / full, 0, 1) * 255.0).round()
            arr = arr.astype(np.uint8)
    return torch.from_numpy(np.ascontiguousarray(arr))


def _folder_files(folder: Path) -> list[Path]:
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES + ARRAY_SUFFIXES
    )
    if not files:
        raise FileNotFoundError(
            f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) or arrays "
            f"({', '.join(ARRAY_SUFFIXES)}) found"
        )
    return files


def _file_images(path: Path, in_folder: bool) -> torch.Tensor:
    """The images of one file as ``[n, ...]`` (a single image file gives n = 1).

    An array file given directly is a batch (``[N, H, W]`` grey, ``[N, C, H, W]`` or
    ``[N, H, W, C]``); a 2-D one is refused (one image, or N rows of values?). In a folder, a
    2-D array is one grey image, a 3-D array is one image (``[H, W, C]`` with C in 1, 3, 4 or
    ``[C, H, W]`` with C in 1, 3), otherwise a batch.
    """
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return _read_image_file(path).unsqueeze(0)
    arr = load_array_file(path)
    if arr.dim() == 2 and not in_folder:
        raise ValueError(
            f"a 2-D array {list(arr.shape)} is not a batch of images: an array file holds "
            "[N, H, W], [N, H, W, C] or [N, C, H, W] (one image: [1, H, W]); a 2-D array is "
            "one image only as one file of a folder"
        )
    is_single = arr.dim() == 2 or (
        in_folder and arr.dim() == 3 and (arr.shape[-1] in (1, 3, 4) or arr.shape[0] in (1, 3))
    )
    return arr.unsqueeze(0) if is_single else arr


def iter_image_batches(
    source: ImageSource, batch_size: int = 64, limit: int | None = None
) -> Iterator[torch.Tensor]:
    """Raw image batches (dtype and layout as stored) from a tensor, array, file or folder."""
    if isinstance(source, (torch.Tensor, np.ndarray)):
        x = torch.as_tensor(source)
        n = x.shape[0] if limit is None else min(limit, x.shape[0])
        for s in range(0, n, batch_size):
            yield x[s : min(n, s + batch_size)]
        return
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"image source not found: {path}")
    in_folder = path.is_dir()
    files = _folder_files(path) if in_folder else [path]
    pending: list[torch.Tensor] = []
    have = 0
    emitted = 0
    for f in files:
        try:
            imgs = _file_images(f, in_folder)
        except Exception as exc:
            raise ValueError(f"cannot read images from {f}: {exc}") from exc
        pending.append(imgs)
        have += imgs.shape[0]
        while have >= batch_size or (limit is not None and emitted + have >= limit):
            cat = torch.cat([_to_nchw(p) for p in pending])
            take = batch_size if limit is None else min(batch_size, limit - emitted)
            yield cat[:take]
            emitted += take
            rest = cat[take:]
            pending, have = ([rest], rest.shape[0]) if rest.shape[0] else ([], 0)
            if limit is not None and emitted >= limit:
                return
    if pending:
        yield torch.cat([_to_nchw(p) for p in pending])


def count_images(source: ImageSource) -> int | None:
    """Number of images of a tensor/array source (None for paths: unknown until read)."""
    if isinstance(source, (torch.Tensor, np.ndarray)):
        return int(source.shape[0])
    return None


def load_images(source: ImageSource, limit: int | None = None) -> torch.Tensor:
    """All images of a source as one raw ``[N, C, H, W]`` tensor (dtype as stored)."""
    return torch.cat([_to_nchw(b) for b in iter_image_batches(source, 256, limit)])


# ------------------------------------------------------------------------------------------------
# Metrics


def _extract(
    source: ImageSource,
    fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]],
    *,
    batch_size: int,
    value_range: Sequence[float] | None,
    keep: bool,
    keep_logits: bool,
    limit: int | None,
    desc: str,
    progress: bool,
) -> tuple[FeatureStats, torch.Tensor | None, tuple[float, float]]:
    stats = FeatureStats(keep=keep)
    logits: list[torch.Tensor] = []
    vr: tuple[float, float] | None = tuple(value_range) if value_range is not None else None
    total = count_images(source)
    if total is not None and limit is not None:
        total = min(total, limit)
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False)
    for raw in iter_image_batches(source, batch_size, limit):
        if vr is None:  # decide once from the first batch, so every batch is mapped alike
            vr = infer_value_range(raw)
        feats, logit = fn(to_unit_float(raw, vr))
        stats.update(feats)
        if keep_logits and logit is not None:
            logits.append(logit.detach().cpu())
        bar.update(raw.shape[0])
    bar.close()
    if stats.n == 0:
        raise ValueError(f"{desc}: no images")
    assert vr is not None
    return stats, (torch.cat(logits) if logits else None), vr


def compute_image_metrics(
    samples: ImageSource,
    refs: ImageSource,
    *,
    extractor: InceptionFeatureExtractor | None = None,
    weights: str | os.PathLike | None = None,
    seed: int = 0,
    metrics: Iterable[str] = ("fd", "kid", "pr", "is"),
    batch_size: int = 64,
    value_range: Sequence[float] | None = None,
    ref_value_range: Sequence[float] | None = None,
    device: torch.device | str | None = None,
    limit: int | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    pr_k: int = 3,
    progress: bool = True,
) -> dict[str, object]:
    """FID (or rFID), KID, precision/recall and IS of ``samples`` against ``refs``.

    The extractor is the standard FID Inception when ``weights`` (or
    ``$INRFLOW_INCEPTION_WEIGHTS``) is given, otherwise the seeded random rFID network; result
    keys carry its label: ``FID``/``KID``/``precision``/``recall``/``IS`` with real weights,
    ``rFID``/``rKID``/``rPrecision``/``rRecall`` with random ones (IS is then not computed: the
    report says so under ``IS-note``). ``metrics`` picks from ``fd``, ``kid``, ``pr``, ``is``.
    """
    wanted = {m.lower() for m in metrics}
    unknown = wanted - {"fd", "kid", "pr", "is"}
    if unknown:
        raise ValueError(f"unknown image metrics {sorted(unknown)}; choose from fd, kid, pr, is")
    dev = torch.device(device) if device is not None else default_device()
    ext = extractor if extractor is not None else inception_extractor(weights, seed, dev)
    ext = ext.to(dev)
    real = ext.kind == "fid"
    skipped_is = "is" in wanted and not real  # IS of a random network means nothing
    if skipped_is:
        wanted.discard("is")
    keep = bool(wanted & {"kid", "pr"})

    def fn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return ext(x)

    s_stats, s_logits, s_vr = _extract(
        samples,
        fn,
        batch_size=batch_size,
        value_range=value_range,
        keep=keep,
        keep_logits="is" in wanted,
        limit=limit,
        desc="samples",
        progress=progress,
    )
    r_stats, _, r_vr = _extract(
        refs,
        fn,
        batch_size=batch_size,
        value_range=ref_value_range,
        keep=keep,
        keep_logits=False,
        limit=limit,
        desc="references",
        progress=progress,
    )
    prefix = "" if real else "r"
    out: dict[str, object] = {
        "extractor": ext.description,
        "num_samples": s_stats.n,
        "num_refs": r_stats.n,
        "sample_value_range": list(s_vr),
        "ref_value_range": list(r_vr),
    }
    if "fd" in wanted:
        out[ext.metric_name] = frechet_distance(
            s_stats.mean(), s_stats.cov(), r_stats.mean(), r_stats.cov()
        )
    if "kid" in wanted:
        mean, std = kid(
            s_stats.features(),
            r_stats.features(),
            subsets=kid_subsets,
            subset_size=kid_subset_size,
            device=dev,
        )
        out[f"{prefix}KID"], out[f"{prefix}KID-std"] = mean, std
    if "pr" in wanted:
        pr = precision_recall(r_stats.features(), s_stats.features(), k=pr_k, device=dev)
        out["rPrecision" if prefix else "precision"] = pr["precision"]
        out["rRecall" if prefix else "recall"] = pr["recall"]
    if "is" in wanted and s_logits is not None:
        splits = min(10, s_logits.shape[0])
        out["IS"], out["IS-std"] = inception_score(s_logits, splits=splits)
    if skipped_is:
        out["IS"] = None
        out["IS-note"] = "skipped: Inception Score needs the real Inception weights"
    return out
