"""The demo, in a place of its own: `exsa-doctor demo [SCENARIO]` builds a real failure on this
machine, diagnoses it and cleans up.

- `standin/`: a stand-in for exsa-engine (same configuration, start-up order, log lines and
  HTTP API; `python -m exsa_doctor.demo.standin`), and the GGUF maker it and the tests use. It
  takes on the engine's name as it starts (argv[0] `exsa-engine`), so the exsa-engine profile
  knows it the way it knows the real engine; nothing in the product knows the stand-in.
- `scenarios.py`: builders that start real processes (the stand-in, a squatter on its port, a
  lock holder, an orphan) and wait until the failure has really happened.
- here: the demo itself. The diagnosis is the one `diagnose` runs (`api.diagnose`), pointed at
  the scenario's URL, model, log and the time the simulated client's request failed. Whatever
  happens (an error, Ctrl-C, SIGTERM), every process the scenario started is stopped by PID.

Nothing outside this package imports it, except the CLI's `demo` command. Imports are made by
the functions that need them, so starting the stand-in does not load the demo's machinery.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from exsa_doctor.demo.scenarios import Scenario
    from exsa_doctor.model import Diagnosis
    from exsa_doctor.target import Target

DEFAULT_SCENARIO = "race"


def scenario_target(sc: Scenario, timeout: float = 10.0, watch: float | None = None) -> Target:
    """The target a user of this scenario would give: its URL, model, log and failure time."""
    from exsa_doctor.api import make_target

    return make_target(
        url=sc.url,
        model=sc.model,
        logs=[sc.log] if sc.log else (),
        pids=sc.target_pids,
        watch_s=sc.watch_s if watch is None else watch,
        failed_at=f"{sc.failed_at:.6f}" if sc.failed_at is not None else None,
        timeout_s=timeout,
    )


def diagnose_scenario(sc: Scenario, timeout: float = 10.0, watch: float | None = None) -> Diagnosis:
    """Run every probe against the scenario, exactly as `exsa-doctor diagnose` would."""
    from exsa_doctor.api import diagnose

    return diagnose(scenario_target(sc, timeout, watch))


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so cleanup runs when the demo itself is stopped."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stderr(message: str) -> None:
    sys.stderr.write(f"demo: {message}\n")
    sys.stderr.flush()


def run_demo(
    name: str = DEFAULT_SCENARIO,
    timeout: float = 10.0,
    notify: Callable[[str], None] | None = _stderr,
    watch: float | None = None,
) -> Diagnosis:
    """Build `name`, diagnose it, always clean up. KeyError for an unknown scenario."""
    from exsa_doctor.demo.scenarios import build, names

    if name not in names():
        raise KeyError(name)
    with _sigterm_as_interrupt():
        sc = build(name, notify)
        try:
            if notify:
                notify(f"scenario {sc.name}: {sc.title}")
                notify(f"diagnosing {sc.url} (model {sc.model}, log {sc.log})")
            return diagnose_scenario(sc, timeout, watch)
        finally:
            if notify:
                notify(f"cleaning up (stopping PIDs {', '.join(map(str, sc.pids)) or 'none'})")
            sc.cleanup()
