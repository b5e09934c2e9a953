"""The CI subset of `make chaos`: a few dozen pairs through the local stack under every fault, and no harm done."""

from __future__ import annotations

from pathlib import Path

import pytest

from avatar_local.chaos import ChaosConfig, run_chaos

pytestmark = pytest.mark.e2e


def test_a_chaos_run_loses_nothing_and_does_nothing_twice(tmp_path: Path) -> None:
    # Given 24 pairs (good, half and bad ones, for both providers) and the chaos run's faults
    report = run_chaos(ChaosConfig(pairs=24, seed=7, settle_timeout=480), tmp_path, say=lambda _: None)
    print(report.table())
    # Then most kinds of fault were really injected (which ones fire depends on timing and the seed)
    injected = {row.label: int(row.value) for row in report.rows if row.label.startswith("injected:")}
    assert sum(1 for count in injected.values() if count > 0) >= len(injected) // 2, injected
    # and every pair ended in exactly one explained outcome, announced once, with nothing left behind
    assert report.harms == dict.fromkeys(report.harms, 0)
    assert sum(int(row.value) for row in report.rows if row.label.startswith("tasks ended")) == 24
