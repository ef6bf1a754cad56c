"""InceptionV3 feature extractor for FID, written in plain torch (no torchvision).

Two ways to get weights:

- **FID** (comparable with published numbers): the standard TF-ported FID Inception weights in
  the torchvision ``Inception3`` state-dict layout, the file
  ``pt_inception-2015-12-05-6726825d.pth`` that pytorch-fid publishes on its GitHub release
  page (pytorch-fid downloads it on first use and keeps it in the torch hub cache,
  ``~/.cache/torch/hub/checkpoints/``). Pass its path as
  ``weights=`` or set ``INRFLOW_INCEPTION_WEIGHTS``. inrflow never downloads it.
- **rFID** (no file, not comparable with anything published): the same architecture with weights
  drawn from a fixed seed by inrflow's own counter-based generator (SplitMix64 -> He-uniform), so
  they are identical on every machine and every torch/numpy version; batch norms are identity
  (running mean 0, variance 1). Its numbers are labelled ``rFID`` and only compare runs of this
  extractor with the same seed (the weights' SHA-256 is reported alongside).

The FID variant of the network (pytorch-fid's ``FIDInceptionA/C/E``) differs from torchvision's
ImageNet InceptionV3 in its average pools (``count_include_pad=False``) and the last block's max
pool; both are reproduced here. Preprocessing follows pytorch-fid: bilinear resize to 299 x 299
(``align_corners=False``) of images in [0, 1], then ``2 x - 1``.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FID_WEIGHTS_FILE",
    "WEIGHTS_ENV",
    "InceptionFeatureExtractor",
    "InceptionV3",
    "inception_extractor",
    "random_inception_state_dict",
]

WEIGHTS_ENV = "INRFLOW_INCEPTION_WEIGHTS"
FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
# torch-hub file names carry the first 8 hex digits of the file's SHA-256.
FID_WEIGHTS_SHA256_PREFIX = "6726825d"
NUM_CLASSES = 1008  # the 2015 TF graph's classifier (1000 ImageNet classes + 8 unused)
FEATURE_DIM = 2048


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3, the TF value) -> ReLU."""

    def __init__(self, cin: int, cout: int, **kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    # The TF graph's 3x3 average pools do not count the zero padding.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool(x))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, bd, bp], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for layer in (
            self.branch7x7dbl_2,
            self.branch7x7dbl_3,
            self.branch7x7dbl_4,
            self.branch7x7dbl_5,
        ):
            bd = layer(bd)
        bp = self.branch_pool(_avg_pool(x))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], 1)


class InceptionE(nn.Module):
    """The last two blocks; ``max_pool=True`` is the FID graph's Mixed_7c (a max pool branch)."""

    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        if self.max_pool:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = _avg_pool(x)
        bp = self.branch_pool(pooled)
        return torch.cat([b1, b3, bd, bp], 1)


class InceptionV3(nn.Module):
    """The FID InceptionV3 (torchvision ``Inception3`` module names, no aux head, 1008 classes).

    ``forward`` takes ``[N, 3, 299, 299]`` inputs already scaled to [-1, 1] and returns the 2048-d
    pool features and the 1008 logits.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (
            self.Mixed_5b,
            self.Mixed_5c,
            self.Mixed_5d,
            self.Mixed_6a,
            self.Mixed_6b,
            self.Mixed_6c,
            self.Mixed_6d,
            self.Mixed_6e,
            self.Mixed_7a,
            self.Mixed_7b,
            self.Mixed_7c,
        ):
            x = block(x)
        pool = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return pool, self.fc(pool)


# ------------------------------------------------------------------------------------------------
# Deterministic random weights


_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64_uniform(seed: int, n: int) -> np.ndarray:
    """``n`` float64 uniforms in [0, 1) from SplitMix64 of a counter: plain integer arithmetic,
    so the stream is the same on every platform and every numpy version."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed & 0xFFFFFFFFFFFFFFFF) + (
            np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        )
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def random_inception_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """The rFID weights: He-uniform convolutions, identity batch norms, a uniform classifier.

    Every tensor has its own stream, keyed by ``seed`` and the CRC32 of its name, so the values
    of one tensor never depend on the others or on the order of modules.
    """
    template = InceptionV3().state_dict()
    out: dict[str, torch.Tensor] = {}
    for name, ref in template.items():
        if name.endswith("num_batches_tracked"):
            out[name] = torch.zeros_like(ref)
            continue
        if name.endswith(("bn.weight", "bn.running_var")):
            out[name] = torch.ones_like(ref)
            continue
        if name.endswith(("bn.bias", "bn.running_mean", "fc.bias")):
            out[name] = torch.zeros_like(ref)
            continue
        fan_in = int(np.prod(ref.shape[1:]))
        bound = (
            float(np.sqrt(6.0 / fan_in))
            if name.endswith("conv.weight")
            else float(np.sqrt(1.0 / fan_in))
        )
        stream = (seed * 0x100000001B3) ^ (zlib.crc32(name.encode()) << 16)
        u = _splitmix64_uniform(stream, ref.numel())
        vals = ((2.0 * u - 1.0) * bound).astype(np.float32).reshape(tuple(ref.shape))
        out[name] = torch.from_numpy(vals)
    return out


def state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names and float32 bytes of a state dict (an identity for reports)."""
    h = hashlib.sha256()
    for name in sorted(state):
        if name.endswith("num_batches_tracked"):
            continue
        h.update(name.encode())
        h.update(state[name].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------
# Loading the standard weights


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_fid_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a torchvision-layout FID Inception state dict and check it against the architecture.

    Accepts a bare state dict or one under ``"state_dict"``/``"model"``, with or without a
    ``module.`` prefix; ignores ``AuxLogits.*`` and ``num_batches_tracked``. Missing, unexpected or
    mis-shaped tensors raise ``ValueError`` naming them.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"Inception weights file not found: {p}")
    obj = torch.load(p, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise ValueError(f"{p}: expected a state dict, got {type(obj).__name__}")
    state = {}
    for key, val in obj.items():
        k = key[len("module.") :] if key.startswith("module.") else key
        if k.startswith("AuxLogits.") or k.endswith("num_batches_tracked"):
            continue
        state[k] = val
    template = {
        k: v for k, v in InceptionV3().state_dict().items() if not k.endswith("num_batches_tracked")
    }
    missing = sorted(set(template) - set(state))
    unexpected = sorted(set(state) - set(template))
    bad_shapes = [
        f"{k}: {tuple(state[k].shape)} != {tuple(template[k].shape)}"
        for k in template
        if k in state and tuple(state[k].shape) != tuple(template[k].shape)
    ]
    if missing or unexpected or bad_shapes:
        raise ValueError(
            f"{p} is not a FID InceptionV3 state dict (torchvision Inception3 layout, "
            f"1008 classes): missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, "
            f"wrong shapes {bad_shapes[:5]}"
        )
    return {k: v.to(torch.float32) for k, v in state.items()}


class InceptionFeatureExtractor(nn.Module):
    """Images -> (2048-d pool features, 1008 logits) with FID preprocessing.

    ``kind`` is ``"fid"`` (standard weights loaded from a file) or ``"rfid"`` (seeded random
    weights); ``metric_name`` is the label reports must use (``"FID"`` or ``"rFID"``).
    ``forward`` takes ``[N, 3|1, H, W]`` float images in [0, 1] (grey images are repeated to RGB).
    """

    def __init__(self, weights: str | os.PathLike | None = None, seed: int = 0) -> None:
        super().__init__()
        self.net = InceptionV3()
        if weights is not None:
            path = Path(weights)
            state = load_fid_state_dict(path)
            self.kind = "fid"
            self.metric_name = "FID"
            self.weights_sha256 = _file_sha256(path)
            self.standard = self.weights_sha256.startswith(FID_WEIGHTS_SHA256_PREFIX)
            tag = "standard" if self.standard else "NON-STANDARD (sha256 differs)"
            self.description = (
                f"InceptionV3 pool3 features, {tag} FID weights {path.name} "
                f"(sha256 {self.weights_sha256[:12]})"
            )
        else:
            state = random_inception_state_dict(seed)
            self.kind = "rfid"
            self.metric_name = "rFID"
            self.standard = False
            self.weights_sha256 = state_dict_sha256(state)
            self.description = (
                f"InceptionV3 pool3 features, RANDOM weights (inrflow seed {seed}, "
                f"sha256 {self.weights_sha256[:12]}); not comparable with published FID"
            )
        self.seed = seed
        missing, unexpected = self.net.load_state_dict(state, strict=False)
        real_missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if real_missing or unexpected:  # pragma: no cover - load_fid_state_dict checked already
            raise ValueError(f"weights do not fit: missing {real_missing}, unexpected {unexpected}")
        self.eval()
        self.requires_grad_(False)

    def train(self, mode: bool = True) -> InceptionFeatureExtractor:
        # Always eval: batch norm must use the stored statistics.
        return super().train(False)

    @staticmethod
    def preprocess(images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> 299 x 299, [-1, 1], 3 channels (pytorch-fid's resize)."""
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected [N, 1|3, H, W] images, got {tuple(images.shape)}")
        x = images.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (299, 299):
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return 2.0 * x - 1.0

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        param = next(self.net.parameters())
        x = self.preprocess(images.to(param.device))
        return self.net(x)


def inception_extractor(
    weights: str | os.PathLike | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    *,
    use_env: bool = True,
) -> InceptionFeatureExtractor:
    """The FID extractor when weights are given (argument or ``$INRFLOW_INCEPTION_WEIGHTS``),
    otherwise the seeded random rFID extractor; moved to ``device``."""
    if weights is None and use_env:
        weights = os.environ.get(WEIGHTS_ENV) or None
    ext = InceptionFeatureExtractor(weights, seed=seed)
    return ext.to(device) if device is not None else ext
