"""Port-owner and model-holder lookups: ours in-process versus lsof, ss and psutil.

Run: python benchmarks/bench_lookups.py [--extra 300] [--repeat 15]
Starts a listener and a model holder (open + mmap + flock) in child processes, plus `--extra` idle
processes, then times each method answering the same question. Prints medians and our ratio
against `lsof` (< 1 means faster).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil

from benchmarks.common import extra_processes, free_port, median_ms, summary, timed

HOLDER = """
import fcntl, mmap, os, socket, sys, time
path, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(); s.bind(("127.0.0.1", port)); s.listen()
f = open(path, "rb"); m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
fcntl.flock(f, fcntl.LOCK_EX)
sys.stdout.write("r"); sys.stdout.flush(); time.sleep(3600)
"""


def psutil_port_owner(port: int) -> list[int]:
    return [
        c.pid
        for c in psutil.net_connections("tcp")
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid
    ]


def psutil_holders(path: str) -> list[int]:
    found = []
    for p in psutil.process_iter():
        try:
            if any(f.path == path for f in p.open_files()) or any(
                m.path == path for m in p.memory_maps(grouped=True)
            ):
                found.append(p.pid)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--extra", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    from exsa_doctor.oslayer.files import holders_of
    from exsa_doctor.oslayer.sockets import listeners_of

    tmp = Path(tempfile.mkdtemp(prefix="exsa-bench-"))
    model = tmp / "model.gguf"
    model.write_bytes(b"GGUF" + os.urandom(4 * 1024 * 1024))
    port = free_port()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(model), str(port)], stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None
        holder.stdout.read(1)
        with extra_processes(args.extra):
            n = len(psutil.pids())
            print(f"processes on the machine: {n}  (extra: {args.extra})")
            rows: list[tuple[str, list[float]]] = []
            ours_port = timed(lambda: listeners_of(port, None), args.repeat)
            assert any(l.pid == holder.pid for l in listeners_of(port, None).listeners)
            rows.append(("port: exsa-doctor listeners_of (in-process)", ours_port))
            lsof = shutil.which("lsof")
            if lsof:
                rows.append(
                    (
                        "port: lsof -nP -iTCP:PORT -sTCP:LISTEN",
                        timed(
                            lambda: subprocess.run(
                                [lsof, "-nP", f"-iTCP:{port}", "-sTCP:LISTEN"], capture_output=True
                            ),
                            args.repeat,
                        ),
                    )
                )
            ss = shutil.which("ss")
            if ss:
                rows.append(
                    (
                        "port: ss -ltnp sport = :PORT",
                        timed(
                            lambda: subprocess.run(
                                [ss, "-ltnp", f"sport = :{port}"], capture_output=True
                            ),
                            args.repeat,
                        ),
                    )
                )
            rows.append(
                (
                    "port: psutil.net_connections()",
                    timed(lambda: psutil_port_owner(port), args.repeat),
                )
            )
            ours_model = timed(lambda: holders_of(str(model), None), args.repeat)
            h = holders_of(str(model), None)
            assert holder.pid in h.open_by or holder.pid in h.mapped_by
            rows.append(("model: exsa-doctor holders_of (in-process)", ours_model))
            if lsof:
                rows.append(
                    (
                        "model: lsof MODEL",
                        timed(
                            lambda: subprocess.run([lsof, str(model)], capture_output=True),
                            max(5, args.repeat // 2),
                        ),
                    )
                )
            rows.append(
                (
                    "model: psutil open_files()+memory_maps()",
                    timed(lambda: psutil_holders(str(model)), max(3, args.repeat // 5), warmup=1),
                )
            )
            for name, samples in rows:
                print(f"{name:<46} {summary(samples)}")
            by = {name: median_ms(s) for name, s in rows}
            if lsof:
                print(
                    f"ratio port  ours/lsof = {by[rows[0][0]] / by['port: lsof -nP -iTCP:PORT -sTCP:LISTEN']:.3f}"
                )
                print(
                    f"ratio model ours/lsof = {by['model: exsa-doctor holders_of (in-process)'] / by['model: lsof MODEL']:.3f}"
                )
    finally:
        holder.kill()
        holder.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"(bench took {time.time() - t0:.1f} s)")
