"""Benchmark: `kai-run doctor --all` over N profiles whose proxies all hang.

Each profile points at its own loopback proxy that accepts TCP connections and never answers,
and has one target behind it (which that proxy would have to reach, so it is never contacted).
The checks run concurrently with one --timeout per network step, so the whole run should take
about one timeout plus start-up, not N timeouts. Everything stays on 127.0.0.1/127.0.0.2.

    python bench/doctor_hanging.py [--profiles 10] [--timeout 1] [--runs 5]

Prints each run's wall time, the median, and the median minus the timeout (start-up and
overhead).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

# Variables that would let the machine's own setup leak into the measured run.
_STRIPPED = ("_PROXY", "_proxy", "CA_BUNDLE", "SSL_CERT_", "KAI_RUN_")


@contextlib.contextmanager
def hanging_proxies(count: int) -> Iterator[list[str]]:
    """`count` loopback listeners that accept and then say nothing, until the block ends."""
    listeners: list[socket.socket] = []
    accepted: list[socket.socket] = []
    stop = threading.Event()
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        s.settimeout(0.1)
        listeners.append(s)

    def accept_loop(s: socket.socket) -> None:
        while not stop.is_set():
            try:
                conn, _ = s.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(conn)  # kept open, never answered

    threads = [threading.Thread(target=accept_loop, args=(s,), daemon=True) for s in listeners]
    for t in threads:
        t.start()
    try:
        yield [f"http://127.0.0.1:{s.getsockname()[1]}" for s in listeners]
    finally:
        stop.set()
        for t in threads:
            t.join(1)
        for sock in listeners + accepted:
            sock.close()


def clean_env(workdir: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not any(p in k for p in _STRIPPED)}
    for var in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME"):
        env[var] = os.path.join(workdir, var.lower())
    env["XDG_CONFIG_DIRS"] = os.path.join(workdir, "site")
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="kai-bench-") as workdir,
        hanging_proxies(args.profiles) as proxies,
    ):
        path = os.path.join(workdir, "profiles.toml")
        with open(path, "w", encoding="utf-8") as f:
            for i, proxy in enumerate(proxies):
                f.write(
                    f'[profiles.hang{i}]\nhttps_proxy = "{proxy}"\n'
                    'check_urls = ["https://127.0.0.2:9/v1/models"]\n\n'
                )
        env = clean_env(workdir)
        cmd = [sys.executable, "-m", "kai_launch", "doctor", "-c", path, "--all"]
        cmd += ["--timeout", f"{args.timeout:g}", "--json"]
        times: list[float] = []
        for run in range(args.runs + 1):  # the first run warms caches and is not counted
            start = time.monotonic()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            elapsed = time.monotonic() - start
            rows = json.loads(proc.stdout)
            hung = [r for r in rows if r["check"] in ("proxy.http", "target.tunnel")]
            if proc.returncode != 1 or len(hung) != 2 * args.profiles:
                print(
                    f"unexpected result (exit {proc.returncode}):\n{proc.stderr}", file=sys.stderr
                )
                return 1
            if run:
                times.append(elapsed)
                print(f"run {run}: {elapsed:.2f} s")
    median = statistics.median(times)
    print(
        f"doctor --all over {args.profiles} hanging proxies, --timeout {args.timeout:g}: "
        f"median {median:.2f} s (min {min(times):.2f} s) = timeout + {median - args.timeout:.2f} s; "
        f"sequential checks would take at least {2 * args.profiles * args.timeout:g} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
