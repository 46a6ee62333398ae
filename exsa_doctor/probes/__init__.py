"""The probe registry: each probe's name, module and class, in the order probes are listed.

A probe's module is imported when the probe is first used, not when the package is: an offline
diagnosis runs only the logs probe, and importing every probe (psutil, httpx, the stack reader)
would cost it about 20 ms of its 0.3 s budget. `ALL_PROBES` is every probe class, in order.
"""

from __future__ import annotations

import importlib
from functools import cache

from exsa_doctor.probes.base import Probe

# (name, module, class); the name is the class's own `name` (a conformance test checks it)
REGISTRY: tuple[tuple[str, str, str], ...] = (
    ("port", "exsa_doctor.probes.port", "PortProbe"),
    ("processes", "exsa_doctor.probes.processes", "ProcessesProbe"),
    ("model", "exsa_doctor.probes.modelfile", "ModelProbe"),
    ("health", "exsa_doctor.probes.health", "HealthProbe"),
    ("logs", "exsa_doctor.probes.logs", "LogsProbe"),
    ("generation", "exsa_doctor.probes.generation", "GenerationProbe"),
    ("progress", "exsa_doctor.probes.progress", "ProgressProbe"),
    ("stack", "exsa_doctor.probes.stack", "StackProbe"),
)


@cache
def probe_class(name: str) -> type[Probe]:
    """The class of the probe called `name` (KeyError when no probe has that name)."""
    for known, module, cls in REGISTRY:
        if known == name:
            found = getattr(importlib.import_module(module), cls)
            if not (isinstance(found, type) and issubclass(found, Probe)):
                raise TypeError(f"{module}.{cls} is not a Probe")
            return found
    raise KeyError(name)


def all_probes() -> tuple[type[Probe], ...]:
    """Every probe class, in listing order (imports every probe module)."""
    return tuple(probe_class(name) for name, _module, _cls in REGISTRY)


def __getattr__(attr: str) -> tuple[type[Probe], ...]:
    # `from exsa_doctor.probes import ALL_PROBES` builds the full list on first use
    if attr == "ALL_PROBES":
        return all_probes()
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def probe_names() -> tuple[str, ...]:
    return tuple(name for name, _module, _cls in REGISTRY)


def select(names: list[str] | tuple[str, ...] | None = None) -> list[Probe]:
    """Instances of the named probes (all when `names` is empty); unknown names raise KeyError."""
    if not names:
        return [cls() for cls in all_probes()]
    known = set(probe_names())
    unknown = [n for n in names if n not in known]
    if unknown:
        raise KeyError(", ".join(unknown))
    return [probe_class(n)() for n in names]
