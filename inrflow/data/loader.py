"""Distributed, resumable, deterministic batches for flow matching.

The training stream is a sequence of positions 0, 1, 2, ...; position ``p`` holds dataset item
``perm_e[p mod S]`` of epoch ``e = p // S`` (a fresh permutation per epoch) and the seed
``mix(seed, p)``. Step ``s`` takes positions ``[s G, (s + 1) G)`` (``G`` = global batch) and rank
``r`` the slice ``[r G/W, (r + 1) G/W)`` of it. Every random choice of a sample, its augmentation
in the dataset and its flow-matching draws (time, noise, query and context subsets, label
dropout) in :class:`FlowCollate`, comes from its position's seed. So

- a run resumed at step ``s`` sees exactly the batches of the uninterrupted run, and
- W ranks see, together, exactly the batch one process sees, sample by sample,

whatever the number of worker processes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from inrflow.flow import PAIRINGS, FlowDraws, draw_sample, ot_pair_noise

from .base import CoordinateDataset

__all__ = ["FlowCollate", "StreamSampler", "build_loader", "mix_seed"]

_MASK64 = (1 << 64) - 1


def mix_seed(seed: int, position: int, salt: int = 0) -> int:
    """A well-spread 63-bit seed for ``position`` of the stream (SplitMix64 finaliser)."""
    z = (seed * 0x9E3779B97F4A7C15 + position * 0xBF58476D1CE4E5B9 + salt) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1


class StreamSampler(Sampler):
    """Yields ``(index, seed)`` for this rank's share of every global batch, forever.

    Args:
        size: dataset length.
        global_batch: samples per step over all ranks (divisible by ``world``).
        rank, world: this process's place among the data-parallel ranks.
        seed: base seed (epoch permutations and per-sample seeds).
        start_step: first step to produce (``--resume`` passes the restored step).
        shuffle: permute each epoch (else in order).
    """

    def __init__(
        self,
        size: int,
        global_batch: int,
        rank: int = 0,
        world: int = 1,
        seed: int = 0,
        start_step: int = 0,
        shuffle: bool = True,
    ) -> None:
        if size < 1:
            raise ValueError("the dataset is empty")
        if global_batch % world:
            raise ValueError(f"global batch {global_batch} is not divisible by {world} ranks")
        self.size, self.global_batch, self.rank, self.world = size, global_batch, rank, world
        self.local_batch = global_batch // world
        self.seed, self.start_step, self.shuffle = seed, start_step, shuffle
        self._perm_epoch, self._perm = -1, None

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, self.size)
        if not self.shuffle:
            return offset
        if epoch != self._perm_epoch:
            g = np.random.default_rng(mix_seed(self.seed, epoch, salt=0x5EED))
            self._perm, self._perm_epoch = g.permutation(self.size), epoch
        return int(self._perm[offset])

    def positions(self, step: int) -> range:
        """Stream positions of this rank's samples at ``step``."""
        start = step * self.global_batch + self.rank * self.local_batch
        return range(start, start + self.local_batch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        step = self.start_step
        while True:
            for p in self.positions(step):
                yield self._index(p), mix_seed(self.seed, p)
            step += 1

    def __len__(self) -> int:  # infinite; DataLoader only needs this for len(loader)
        return 1 << 62


class FlowCollate:
    """Stacks items and adds the per-sample flow-matching draws from each item's seed
    (:func:`inrflow.flow.draw_sample`), with the dropped labels already the null class.

    Output keys: ``values`` [B, N, c], ``coords`` [B, N, d] (not for point clouds), ``labels``
    [B] (classes, ``num_classes`` where dropped for CFG; absent when unconditional), ``cond``
    [B, M, Dc] condition tokens and ``cond_drop`` [B] (samples whose tokens the model replaces
    by its null token, probability ``label_dropout``) when the items carry tokens, ``t`` [B],
    ``noise`` [B, N, c], ``query_index`` [B, Q] / ``context_index`` [B, M] (absent when all
    pairs are used), ``skipped`` (unreadable files passed over, a scalar) and ``skipped_index``
    (their dataset indices, 1-D int64; a file met in several items is listed each time).

    ``pairing="ot"`` (point clouds only, items without ``coords``) reorders each sample's noise
    to its optimal matching with the sample's points (:func:`inrflow.flow.ot_pair_noise`);
    ``"random"`` keeps the draw's order. ``time_loc`` shifts the logit-normal times.
    """

    def __init__(
        self,
        num_queries: int | None,
        num_context: int | None = None,
        num_classes: int = 0,
        label_dropout: float = 0.1,
        time_dist: str = "logit_normal",
        time_loc: float = 0.0,
        pairing: str = "random",
    ) -> None:
        if pairing not in PAIRINGS:
            raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")
        self.pairing, self.num_classes = pairing, num_classes
        self._draw = dict(
            num_queries=num_queries,
            num_context=num_context,
            time_dist=time_dist,
            time_loc=time_loc,
            label_dropout=label_dropout,
        )

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        values = torch.stack([it["values"] for it in items])
        _, n, c = values.shape
        out: dict[str, torch.Tensor] = {"values": values}
        if "coords" in items[0]:
            if self.pairing == "ot":
                raise ValueError(
                    "pairing 'ot' reorders noise among a sample's points, which only a point "
                    "cloud (values without coordinates) allows"
                )
            out["coords"] = torch.stack([it["coords"] for it in items])
        has_cond = "cond" in items[0]
        draws = []
        for it, x in zip(items, values, strict=True):
            g = torch.Generator().manual_seed(mix_seed(int(it["seed"]), 0, salt=0xF10E))
            d = draw_sample(n, c, g, cond=has_cond, **self._draw)
            if self.pairing == "ot":
                d.noise = ot_pair_noise(d.noise, x)
            draws.append(d)
        batch = FlowDraws(*(_stack([getattr(d, f) for d in draws]) for f in _DRAW_FIELDS))
        out.update(t=batch.t, noise=batch.noise)
        if batch.query_index is not None:
            out["query_index"] = batch.query_index
        if batch.context_index is not None:
            out["context_index"] = batch.context_index
        if self.num_classes > 0:
            labels = torch.stack([torch.as_tensor(it["label"]).long() for it in items])
            out["labels"] = batch.drop_labels(labels, self.num_classes)
        if has_cond:
            out["cond"] = torch.stack([torch.as_tensor(it["cond"]).float() for it in items])
            out["cond_drop"] = batch.cond_drop
        out["skipped"] = torch.tensor(sum(int(it["skipped"]) for it in items))
        out["skipped_index"] = torch.tensor(
            [i for it in items for i in it.get("skipped_index", ())], dtype=torch.long
        )
        return out


_DRAW_FIELDS = [f.name for f in dataclasses.fields(FlowDraws)]


def _stack(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if parts[0] is None else torch.stack(parts)


class _SeededItems(torch.utils.data.Dataset):
    """Keeps the seed next to the item so the collate can draw from it."""

    def __init__(self, dataset: CoordinateDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        item = self.dataset[key]
        item["seed"] = key[1]
        return item


def _worker_init(worker_id: int) -> None:
    # items draw from their own seeds; this only keeps stray global RNG use distinct per worker
    info = torch.utils.data.get_worker_info()
    np.random.seed(info.seed % 2**32)


def build_loader(
    dataset: CoordinateDataset,
    sampler: StreamSampler,
    collate: FlowCollate,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """An infinite DataLoader over ``dataset`` in the order of ``sampler``."""
    return DataLoader(
        _SeededItems(dataset),
        batch_size=sampler.local_batch,
        sampler=sampler,
        collate_fn=collate,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=True,
        worker_init_fn=_worker_init if num_workers > 0 else None,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
    )
