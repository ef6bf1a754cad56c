"""Which domain a co-training step trains on: a pure function of (seed, step).

Steps are taken in cycles of ``sum(weights)`` steps; within a cycle each domain gets exactly its
weight's number of steps, in an order shuffled from ``(seed, cycle)``. So

- the domain of step ``s`` needs no state: a resumed run draws what the uninterrupted one drew,
  and every rank draws the same domain (no collective);
- after any number of whole cycles each domain has had exactly its share, so a co-trained run
  of ``sum(steps_d)`` steps with weights ``steps_d`` gives every domain as many steps as its own
  single-domain run (a random draw per step would only do so on average);
- the domains interleave within a cycle rather than in blocks.
"""

from __future__ import annotations

from collections.abc import Mapping

from .loader import mix_seed

__all__ = ["DomainSchedule", "parse_weights"]

_SALT = 0x5EED_D0  # keeps the cycle orders apart from the data stream's per-sample seeds


class DomainSchedule:
    """Domain per step from integer ``weights`` (domain name -> steps per cycle) and ``seed``."""

    def __init__(self, weights: Mapping[str, int], seed: int = 0) -> None:
        if not weights:
            raise ValueError("a domain schedule needs at least one domain")
        for name, w in weights.items():
            if isinstance(w, bool) or not isinstance(w, int) or w < 1:
                raise ValueError(f"domain weights must be integers >= 1, got {name}={w!r}")
        self.weights = dict(weights)
        self.names = tuple(weights)
        self.seed = seed
        self.cycle = sum(self.weights.values())
        self._cached: tuple[int, list[str]] | None = None

    def _order(self, cycle: int) -> list[str]:
        """The domains of cycle ``cycle`` in order (a seeded Fisher-Yates shuffle)."""
        if self._cached is not None and self._cached[0] == cycle:
            return self._cached[1]
        order = [n for n in self.names for _ in range(self.weights[n])]
        for i in range(len(order) - 1, 0, -1):
            j = mix_seed(self.seed, cycle * self.cycle + i, _SALT) % (i + 1)
            order[i], order[j] = order[j], order[i]
        self._cached = (cycle, order)
        return order

    def domain_at(self, step: int) -> str:
        """The domain step ``step`` (0-based) trains on."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        return self._order(step // self.cycle)[step % self.cycle]

    def steps_before(self, name: str, step: int) -> int:
        """How many of the steps ``0 .. step - 1`` train domain ``name`` (where its own data
        stream stands at step ``step``)."""
        if name not in self.weights:
            raise KeyError(f"unknown domain {name!r}; the schedule has {list(self.names)}")
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        cycles, rest = divmod(step, self.cycle)
        partial = self._order(cycles)[:rest].count(name) if rest else 0
        return cycles * self.weights[name] + partial

    def counts(self, steps: int) -> dict[str, int]:
        """Steps of each domain in a run of ``steps`` steps."""
        return {n: self.steps_before(n, steps) for n in self.names}


def parse_weights(text: str, names: tuple[str, ...]) -> dict[str, int]:
    """``"digits=2,shapes=5"`` -> ``{"digits": 2, "shapes": 5}`` for exactly the domains
    ``names`` (in their order)."""
    weights: dict[str, int] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"domain weights are NAME=INT pairs, got {item!r}")
        try:
            weights[name.strip()] = int(value)
        except ValueError:
            msg = f"the weight of {name.strip()!r} must be an integer, got {value!r}"
            raise ValueError(msg) from None
    if set(weights) != set(names):
        raise ValueError(f"domain weights must name the domains {list(names)}, got {list(weights)}")
    return {n: weights[n] for n in names}
