"""What a person sees while `wait` and `run` wait: phase changes, and the diagnosis of a failure.

A `Reporter` hears each phase change: a live status line on a terminal (Rich, stderr), plain
lines otherwise (CI logs, pipes), or nothing (`SilentReporter`, which keeps them for tests).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from typing import IO, Any, Protocol

from exsa_doctor.model import Diagnosis


class Reporter(Protocol):
    """Where the wait tells its phase changes (the CLI prints them; tests collect them)."""

    def phase(self, elapsed_s: float, text: str) -> None: ...

    def close(self) -> None: ...


class SilentReporter:
    """A reporter that keeps the phases and prints nothing."""

    def __init__(self) -> None:
        self.lines: list[tuple[float, str]] = []

    def phase(self, elapsed_s: float, text: str) -> None:
        self.lines.append((elapsed_s, text))

    def close(self) -> None:
        return None


class LineReporter:
    """One plain line per phase change (not a TTY: CI logs, pipes)."""

    def __init__(self, stream: IO[str], prefix: str = "exsa-doctor wait") -> None:
        self._stream = stream
        self._prefix = prefix

    def phase(self, elapsed_s: float, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._stream.write(f"{self._prefix}: {elapsed_s:6.2f} s  {text}\n")
            self._stream.flush()

    def close(self) -> None:
        return None


class LiveReporter:
    """A live status line on a TTY: spinner, elapsed time, phase (Rich, on stderr)."""

    def __init__(self, label: str = "waiting for the engine") -> None:
        from rich.console import Console
        from rich.live import Live
        from rich.spinner import Spinner

        self._spinner = Spinner("dots")  # one instance, so its frames advance
        self._label = label
        self._phase = "starting"
        self._started = time.monotonic()
        self._console = Console(stderr=True)
        self._live = Live(self, console=self._console, refresh_per_second=8, transient=True)
        self._live.start()

    def __rich__(self) -> Any:
        elapsed = time.monotonic() - self._started
        self._spinner.update(text=f"{self._label}  {elapsed:5.1f} s  {self._phase}")
        return self._spinner

    def phase(self, elapsed_s: float, text: str) -> None:
        self._phase = text

    def close(self) -> None:
        self._live.stop()
        self._console.print(f"{self._label}: {self._phase}", highlight=False)


def reporter_for(stream: IO[str], label: str = "exsa-doctor wait") -> Reporter:
    """A live line on a TTY (unless NO_COLOR/TERM=dumb), plain lines otherwise."""
    isatty = getattr(stream, "isatty", None)
    if (
        isatty is not None
        and isatty()
        and os.environ.get("TERM", "") != "dumb"
        and not os.environ.get("NO_COLOR")
    ):
        try:
            return LiveReporter(label)
        except Exception:  # a terminal Rich cannot drive: fall back to plain lines
            return LineReporter(stream, label)
    return LineReporter(stream, label)


def render_failure(diagnosis: Diagnosis, write: Callable[[str], object]) -> None:
    """The diagnosis as text, through `write` (stderr for `wait` and `run`)."""
    from exsa_doctor.render import render_as

    text = render_as(diagnosis, "text")
    write(text if text.endswith("\n") else text + "\n")


def stderr_write(text: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(text)
        sys.stderr.flush()
