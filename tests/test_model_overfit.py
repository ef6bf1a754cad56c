"""End to end on the CPU: a ``tiny`` model overfits one 16x16 image with the CICFM loss, then
generates it at 16x16 and, from the same 16x16 context, at 32x32 (resolution-agnostic)."""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from inrflow.flow import FlowDraws, cicfm_loss, draw
from inrflow.model import build_model, grid_coords
from inrflow.sampling import nested_grid_index, sample


def smooth_image(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates ``[n*n, 2]`` and an RGB image ``[n*n, 3]`` in [-1, 1]."""
    c = grid_coords((n, n))
    y, x = c[:, 0], c[:, 1]
    r = 0.8 * torch.sin(2 * math.pi * x)
    g = 0.8 * torch.cos(2 * math.pi * y)
    b = torch.where((x - 0.55) ** 2 + (y - 0.45) ** 2 < 0.09, 0.9, -0.7)
    return c, torch.stack([r, g, b], dim=-1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR for values in [-1, 1] (peak-to-peak 2)."""
    return 10 * math.log10(4.0 / (a - b).square().mean().item())


def downsample2(img: torch.Tensor, n: int) -> torch.Tensor:
    """``[n*n, c]`` row-major image -> 2x2 box average ``[(n/2)^2, c]``."""
    chw = img.reshape(1, n, n, -1).permute(0, 3, 1, 2)
    return F.avg_pool2d(chw, 2).permute(0, 2, 3, 1).reshape(-1, img.shape[-1])


def test_tiny_overfits_and_generates_across_resolutions(one_thread) -> None:
    torch.manual_seed(0)
    coords, img = smooth_image(16)
    model = build_model("tiny")
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    batch = 8
    g = torch.Generator().manual_seed(123)  # a fixed evaluation set of (t, noise)
    t_eval = torch.sigmoid(torch.randn(64, generator=g))
    noise_eval = torch.randn(64, 256, 3, generator=g)

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            loss = cicfm_loss(
                model,
                coords.expand(64, -1, -1),
                img.expand(64, -1, -1),
                FlowDraws(t_eval, noise_eval),
            )
        model.train()
        return loss.item()

    before = eval_loss()
    start = time.perf_counter()
    for _ in range(300):
        values = img.expand(batch, -1, -1)
        loss = cicfm_loss(
            model, coords.expand(batch, -1, -1), values, draw(values, num_queries=128)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    train_s = time.perf_counter() - start
    after = eval_loss()
    ratio = before / after

    # 16x16 and 32x32 from one noise draw on the 32x32 grid; the 16x16 context is its nested
    # sub-grid in both runs, so the two trajectories share their noise.
    z32 = torch.randn(1, 32 * 32, 3, generator=torch.Generator().manual_seed(7))
    idx = nested_grid_index((16, 16), 2)
    s16 = sample(model, None, coords, 50, noise=z32[:, idx], progress=False)[0]
    s32 = sample(
        model, coords, grid_coords((32, 32)), 50, context_index=idx, noise=z32, progress=False
    )[0]
    p_fit = psnr(s16, img)
    p_res = psnr(downsample2(s32, 32), s16)
    print(
        f"\nloss {before:.4f} -> {after:.5f} (x{ratio:.1f}) in 300 steps, {train_s:.1f} s; "
        f"PSNR(16x16 sample, image) {p_fit:.1f} dB; PSNR(32x32 sample downsampled, 16x16 "
        f"sample) {p_res:.1f} dB"
    )
    assert ratio >= 20
    assert p_res >= 20
