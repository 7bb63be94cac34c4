"""The interval formula and paired differences."""

from __future__ import annotations

import numpy as np

from diffshot.stats import paired_difference, summarise


def test_interval_is_1_96_std_over_sqrt_n() -> None:
    values = np.array([80.0, 90.0, 100.0, 70.0])
    summary = summarise(values)
    assert summary.mean == 85.0
    assert np.isclose(summary.ci95, 1.96 * np.sqrt(125.0) / 2.0)
    assert summary.n == 4


def test_paired_difference_is_the_interval_of_differences() -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(60, 90, 1000)
    better = base + 2.0 + rng.normal(0, 0.5, 1000)
    diff = paired_difference(better, base)
    assert abs(diff.mean - 2.0) < 0.1
    assert diff.ci95 < summarise(better).ci95 / 5
