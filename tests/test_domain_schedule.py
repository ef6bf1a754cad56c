"""The co-training domain schedule: exact shares per cycle, a pure function of (seed, step)."""

from __future__ import annotations

import pytest

from inrflow.data.schedule import DomainSchedule, parse_weights


def test_every_cycle_gives_each_domain_exactly_its_weight() -> None:
    s = DomainSchedule({"digits": 2, "shapes": 5}, seed=0)
    drawn = [s.domain_at(i) for i in range(7 * 40)]
    for c in range(40):
        cycle = drawn[7 * c : 7 * (c + 1)]
        assert cycle.count("digits") == 2 and cycle.count("shapes") == 5
    assert len({tuple(drawn[7 * c : 7 * (c + 1)]) for c in range(40)}) > 3  # shuffled per cycle
    assert s.counts(4200) == {"digits": 1200, "shapes": 3000}


def test_steps_before_counts_the_draws() -> None:
    s = DomainSchedule({"a": 1, "b": 3, "c": 2}, seed=7)
    seen = {"a": 0, "b": 0, "c": 0}
    for step in range(100):
        for name in seen:
            assert s.steps_before(name, step) == seen[name], (name, step)
        seen[s.domain_at(step)] += 1


def test_the_draw_depends_on_seed_and_step_only() -> None:
    a = DomainSchedule({"x": 3, "y": 4}, seed=1)
    fresh = [DomainSchedule({"x": 3, "y": 4}, seed=1).domain_at(i) for i in range(200)]
    backwards = [a.domain_at(i) for i in reversed(range(200))][::-1]  # any access order
    assert fresh == backwards
    other = [DomainSchedule({"x": 3, "y": 4}, seed=2).domain_at(i) for i in range(200)]
    assert other != fresh


def test_one_domain_and_bad_input() -> None:
    assert {DomainSchedule({"only": 3}).domain_at(i) for i in range(10)} == {"only"}
    with pytest.raises(ValueError, match="at least one"):
        DomainSchedule({})
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="integers >= 1"):
            DomainSchedule({"a": bad})
    with pytest.raises(KeyError, match="unknown domain"):
        DomainSchedule({"a": 1}).steps_before("b", 3)
    with pytest.raises(ValueError, match=">= 0"):
        DomainSchedule({"a": 1}).domain_at(-1)


def test_parse_weights() -> None:
    assert parse_weights("shapes=5, digits=2", ("digits", "shapes")) == {"digits": 2, "shapes": 5}
    with pytest.raises(ValueError, match="NAME=INT"):
        parse_weights("digits", ("digits",))
    with pytest.raises(ValueError, match="integer"):
        parse_weights("digits=x", ("digits",))
    with pytest.raises(ValueError, match="must name the domains"):
        parse_weights("digits=1", ("digits", "shapes"))
