"""Bridges SIGKILLed under load (issue 14, scenario e): 20 cycles of 2 kills under 300 calls.

Every call succeeds or gets ``BridgeCrashed`` (the call that was running on a
killed bridge; none is run twice), the pool is whole afterwards (all bridges up,
none of them a killed one) and no killed bridge is left running.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from itworkers import WorkerFactory
from scenarios import bridge_kills


@pytest.mark.slow
def test_20_cycles_of_2_bridge_kills_under_300_calls(worker_factory: WorkerFactory, run_log: Path) -> None:
    tally = bridge_kills(worker_factory, run_log)
    print(tally.describe())
    assert tally.calls == 300
    assert tally.facts["killed"] == 40
    assert tally.stranded == 0, tally.describe()
    assert set(tally.errors) <= {"BridgeCrashed"}, tally.describe()
    assert tally.done + tally.errors["BridgeCrashed"] == 300
    assert tally.duplicated == 0, tally.describe()
    assert tally.facts["whole"], tally.describe()
    assert tally.facts["left"] == [], tally.describe()
