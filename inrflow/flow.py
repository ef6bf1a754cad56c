"""Flow matching on coordinate-value pairs: the linear path, the draws of a training step and
the CICFM loss.

The draws (time, noise, query and context subsets, label and condition dropout) have one home,
:func:`draw_sample` (per sample, from the sample's own generator: what the training stream's
collation uses) and :func:`draw` (a batch from one generator: tests, benchmarks); the loss
takes them (:class:`FlowDraws`) and draws nothing. Class-label dropout for classifier-free
guidance is one of these draws, and nowhere else.

Convention (as the authors' ``model/path.py``): ``x0`` is noise, ``x1`` is data, time runs from
t = 0 (noise) to t = 1 (data); ``x_t = t x1 + (1 - t) x0`` and the velocity target is
``u = x1 - x0``. The network predicts the velocity directly.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

__all__ = [
    "PAIRINGS",
    "TIME_DISTS",
    "FlowDraws",
    "cicfm_loss",
    "draw",
    "draw_sample",
    "interpolate",
    "ot_pair_noise",
    "sample_time",
    "target_velocity",
]

TIME_EPS = 1e-4
TIME_DISTS = ("logit_normal", "uniform")
PAIRINGS = ("random", "ot")


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x_t = t x1 + (1 - t) x0`` with ``t`` ``[B]`` broadcast over the trailing dims."""
    tb = t.reshape(-1, *([1] * (x1.dim() - 1))).to(x1.dtype)
    return tb * x1 + (1 - tb) * x0


def target_velocity(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """The conditional velocity of the linear path, ``x1 - x0``."""
    return x1 - x0


def sample_time(
    batch: int,
    *,
    dist: str = "logit_normal",
    eps: float = TIME_EPS,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    loc: float = 0.0,
) -> torch.Tensor:
    """``[batch]`` times in ``[eps, 1 - eps]``: logit-normal(``loc``, 1) (SD3) or uniform.

    Logit-normal puts most samples near ``sigmoid(loc)``; ``loc = 0`` (SD3's choice for
    images) centres them on t = 0.5, where an image's velocity is hardest to predict. A positive
    ``loc`` moves them towards the data end (t = 1), where a point cloud's fine shape is decided.
    The squeeze ``t (1 - 2 eps) + eps`` keeps the path away from the exact endpoints.
    """
    if dist == "logit_normal":
        t = torch.sigmoid(torch.randn(batch, device=device, generator=generator) + loc)
    elif dist == "uniform":
        t = torch.rand(batch, device=device, generator=generator)
    else:
        raise ValueError(f"dist must be one of {TIME_DISTS}, got {dist!r}")
    return t * (1 - 2 * eps) + eps


def ot_pair_noise(noise: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``noise`` ``[N, c]`` reordered so that noise row ``i`` goes to ``points[i]`` along the
    optimal one-to-one matching (least total squared distance; scipy's exact assignment).

    Why: a point cloud is a set, so which noise point flows to which data point is free. Paired
    at random, the paths of one cloud cross everywhere and the regression target at ``x_t`` is
    the average of many unrelated ``x1 - x0``: the network learns a blurred velocity that
    carries noise to a blob. Matched optimally, the paths hardly cross, the target is nearly a
    function of ``x_t`` and the surface is learnable. The reordered noise is still i.i.d.
    Gaussian (the matching is equivariant and the points exchangeable), so sampling from fresh
    noise is unchanged. ``O(N^3)``; ~1 ms at 256 points.
    """
    from scipy.optimize import linear_sum_assignment

    if noise.dim() != 2 or noise.shape != points.shape:
        raise ValueError(
            f"noise {tuple(noise.shape)} and points {tuple(points.shape)} must both be [N, c]"
        )
    cost = torch.cdist(points.double(), noise.double()).square()
    _, cols = linear_sum_assignment(cost.cpu().numpy())
    return noise[torch.from_numpy(cols).to(noise.device)]


def _random_subset(b: int, n: int, k: int, device, generator) -> torch.Tensor:
    """``[b, k]`` indices, an independent uniform k-subset of ``range(n)`` per row."""
    keys = torch.rand(b, n, device=device, generator=generator)
    return keys.topk(k, dim=1, sorted=False).indices


def _take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _check_index(idx: torch.Tensor | None, b: int, name: str) -> torch.Tensor | None:
    if idx is None:
        return None
    if idx.dim() != 2 or idx.shape[0] != b or idx.dtype != torch.long:
        raise ValueError(
            f"{name} must be an int64 [B={b}, M] tensor, got {idx.dtype} {tuple(idx.shape)}"
        )
    return idx


@dataclasses.dataclass
class FlowDraws:
    """The random choices of one flow-matching step, per sample.

    ``t`` ``[B]`` times; ``noise`` ``[B, N, c]`` (``x0``); ``query_index`` / ``context_index``
    ``[B, Q]`` / ``[B, M]`` indices into the N pairs (None: all pairs); ``label_drop`` ``[B]``
    bool, samples whose class label becomes the null class (:meth:`drop_labels`);
    ``cond_drop`` ``[B]`` bool, samples whose condition tokens (and label) the model replaces
    by its null ones. Unbatched (one sample, :func:`draw_sample`): the same without ``B``.
    """

    t: torch.Tensor
    noise: torch.Tensor
    query_index: torch.Tensor | None = None
    context_index: torch.Tensor | None = None
    label_drop: torch.Tensor | None = None
    cond_drop: torch.Tensor | None = None

    @classmethod
    def from_batch(cls, batch: dict[str, torch.Tensor]) -> FlowDraws:
        """The draws of a collated training batch (:class:`inrflow.data.FlowCollate`'s keys;
        its labels are already dropped)."""
        return cls(
            batch["t"],
            batch["noise"],
            batch.get("query_index"),
            batch.get("context_index"),
            None,
            batch.get("cond_drop"),
        )

    def drop_labels(self, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
        """``labels`` with the dropped ones replaced by the null class ``num_classes``."""
        if self.label_drop is None:
            return labels
        return torch.where(self.label_drop, torch.full_like(labels, num_classes), labels)


def _subset_size(k: int | None, n: int, name: str) -> int | None:
    """``k`` of ``n`` pairs, None when that is all of them."""
    if k is None or k >= n:
        return None
    if k < 1:
        raise ValueError(f"{name} must be >= 1, got {k}")
    return k


def draw_sample(
    n: int,
    c: int,
    generator: torch.Generator,
    *,
    num_queries: int | None = None,
    num_context: int | None = None,
    time_dist: str = "logit_normal",
    time_loc: float = 0.0,
    label_dropout: float = 0.0,
    cond: bool = False,
) -> FlowDraws:
    """One sample's draws (unbatched) from its own ``generator``, in a fixed order: time,
    noise ``[n, c]``, query subset, context subset, label drop, then (``cond``: the sample has
    condition tokens) the token drop, so that streams without tokens are unchanged by them.

    Why per sample: a sample's draws then depend on its seed alone, not on how the global
    batch is split over ranks or workers."""
    q = _subset_size(num_queries, n, "num_queries")
    m = _subset_size(num_context, n, "num_context")
    t = sample_time(1, dist=time_dist, generator=generator, loc=time_loc)[0]
    noise = torch.randn(n, c, generator=generator)
    q_idx = torch.rand(n, generator=generator).topk(q, sorted=False).indices if q else None
    c_idx = torch.rand(n, generator=generator).topk(m, sorted=False).indices if m else None
    label_drop = torch.rand(1, generator=generator)[0] < label_dropout
    cond_drop = torch.rand(1, generator=generator)[0] < label_dropout if cond else None
    return FlowDraws(t, noise, q_idx, c_idx, label_drop, cond_drop)


def draw(
    values: torch.Tensor,
    *,
    num_queries: int | None = None,
    num_context: int | None = None,
    time_dist: str = "logit_normal",
    time_loc: float = 0.0,
    label_dropout: float = 0.0,
    cond: bool = False,
    generator: torch.Generator | None = None,
) -> FlowDraws:
    """The draws of a batch like ``values`` ``[B, N, c]`` from one ``generator`` (the global
    RNG when None), on its device: time, noise, context subset, query subset, then the drops
    (only when ``label_dropout > 0``)."""
    if values.dim() != 3:
        raise ValueError(f"values must be [B, N, c], got {tuple(values.shape)}")
    b, n, _ = values.shape
    dev, g = values.device, generator
    q = _subset_size(num_queries, n, "num_queries")
    m = _subset_size(num_context, n, "num_context")
    t = sample_time(b, dist=time_dist, device=dev, generator=g, loc=time_loc)
    noise = torch.randn(values.shape, device=dev, dtype=values.dtype, generator=g)
    c_idx = _random_subset(b, n, m, dev, g) if m else None
    q_idx = _random_subset(b, n, q, dev, g) if q else None
    label_drop = cond_drop = None
    if label_dropout > 0:
        label_drop = torch.rand(b, device=dev, generator=g) < label_dropout
        if cond:
            cond_drop = torch.rand(b, device=dev, generator=g) < label_dropout
    return FlowDraws(t, noise, q_idx, c_idx, label_drop, cond_drop)


def cicfm_loss(
    model: nn.Module,
    coords: torch.Tensor | None,
    values: torch.Tensor,
    draws: FlowDraws,
    labels: torch.Tensor | None = None,
    *,
    cond: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Point-wise conditionally independent flow-matching loss (paper Eq. 4).

    The draws' noise and times give the noisy pairs; the encoder sees the context (all ``N``
    pairs, or the draws' context subset), the decoder predicts the velocity at the draws'
    queries (all pairs when None). Queries and context share the noise, so a query that is
    also a context point has the same noisy value in both. The loss is the MSE to ``x1 - x0``
    over queries and channels.

    Args:
        coords: ``[B, N, d]`` (ignored, may be None, for models with ``coords_are_values``).
        values: ``[B, N, c]`` clean data ``x1``.
        draws: :class:`FlowDraws` of this batch (:func:`draw`, or a collated batch's).
        labels: ``[B]`` class labels, the dropped ones already the null class
            (:meth:`FlowDraws.drop_labels`; the training collation applies them).
        cond: ``[B, M, cond_dim]`` condition tokens; ``draws.cond_drop`` ``[B]`` replaces a
            sample's tokens and label by the null ones.
        reduction: ``"mean"`` (a scalar) or ``"per_sample"`` (``[B]``, the mean over each
            sample's queries and channels: what the trainer buckets by ``t``).
    """
    if reduction not in ("mean", "per_sample"):
        raise ValueError(f"reduction must be 'mean' or 'per_sample', got {reduction!r}")
    if values.dim() != 3:
        raise ValueError(f"values must be [B, N, c], got {tuple(values.shape)}")
    b = values.shape[0]
    if coords is not None and coords.shape[:2] != values.shape[:2]:
        raise ValueError(
            f"coords {tuple(coords.shape)} and values {tuple(values.shape)} disagree on [B, N]"
        )
    t, noise = draws.t, draws.noise
    if noise.shape != values.shape:
        raise ValueError(f"noise {tuple(noise.shape)} must match values {tuple(values.shape)}")
    xt = interpolate(noise, values, t)
    target = target_velocity(noise, values)

    ctx_coords, ctx_values = coords, xt
    idx = _check_index(draws.context_index, b, "context_index")
    if idx is not None:
        ctx_values = _take(xt, idx)
        ctx_coords = _take(coords, idx) if coords is not None else None
    q_coords, q_values = coords, xt
    idx = _check_index(draws.query_index, b, "query_index")
    if idx is not None:
        q_values, target = _take(xt, idx), _take(target, idx)
        q_coords = _take(coords, idx) if coords is not None else None
    kw = {} if draws.cond_drop is None else {"force_drop": draws.cond_drop}
    pred = model(ctx_coords, ctx_values, t, q_coords, q_values, labels=labels, cond=cond, **kw)
    err = (pred.float() - target.float()).square()
    return err.mean() if reduction == "mean" else err.flatten(1).mean(1)
