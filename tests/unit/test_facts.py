"""The run's shared facts: read once, and detection's reading lent to the run while fresh."""

from __future__ import annotations

import time
from dataclasses import replace

from exsa_doctor import facts
from exsa_doctor.context import Context
from exsa_doctor.detect import refine_target
from exsa_doctor.oslayer.types import EngineProcess, ListenerScan, ProcessInfo
from exsa_doctor.supervise.explain import failure_target
from exsa_doctor.supervise.wait import Outcome, WaitResult
from exsa_doctor.target import Sighting, Target, resolve_target
from tests.support.net import free_port

# a PID no process has: only a lent walk can name it
GHOST = 2**22 + 17


def ghost_engine() -> EngineProcess:
    info = ProcessInfo(
        pid=GHOST,
        ppid=1,
        name="exsa-engine",
        exe=None,
        cmdline=("exsa-engine",),
        username=None,
        uid=None,
        create_time=time.time(),
        state="sleeping",
        parent_alive=True,
        orphaned=False,
        cpu_time_s=None,
        rss_bytes=None,
        threads=None,
    )
    return EngineProcess(info, "exsa-engine", None, None, None)


def target_with(age_s: float, *, pids: tuple[int, ...] = ()) -> Target:
    target = resolve_target(url=f"http://127.0.0.1:{free_port()}", environ={})
    profiles = tuple(p.name for p in facts._profiles_for(target.profile))
    scan = ListenerScan(port=target.port, listeners=(), method="test")
    seen = Sighting(time.monotonic() - age_s, profiles, pids, (ghost_engine(),), scan)
    return replace(target, sighting=seen)


def ctx_for(target: Target) -> Context:
    return Context(target=target, deadline=time.monotonic() + 5)


def test_a_fresh_sighting_is_the_runs_engine_walk_and_port_scan() -> None:
    ctx = ctx_for(target_with(0.0))
    found, complete = facts.engines(ctx)
    assert [e.pid for e in found] == [GHOST] and complete
    assert facts.port_listeners(ctx, ctx.target.port).method == "test"


def test_a_stale_sighting_or_other_pids_are_read_again() -> None:
    for target in (target_with(5.0), target_with(0.0, pids=(GHOST,))):
        stale = replace(target, pids=()) if target.pids else target
        ctx = ctx_for(stale)
        found, _ = facts.engines(ctx)
        assert GHOST not in {e.pid for e in found}
        assert facts.port_listeners(ctx, ctx.target.port).method != "test"


def test_detection_lends_its_walk_and_a_failed_wait_does_not_reuse_it() -> None:
    target = refine_target(
        resolve_target(url=f"http://127.0.0.1:{free_port()}", environ={}), auto_profile=True
    )
    assert target.sighting is not None
    assert target.sighting.profiles[0] == target.profile.name
    result = WaitResult(Outcome.EXITED, 0.1, target.base_url, target=target)
    assert failure_target(target, result).sighting is None
