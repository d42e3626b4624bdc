"""Start-up benchmark for the exec path: `kai-run -c profiles.example.toml -p P -- true`
against the same interpreter's `python -c pass`, alternating runs, median ratio.

    .venv/bin/python bench/startup.py [--runs 40]

Targets (issue 2): <= 2.5x for a profile with proxies and secrets, <= 3x with a CA bundle
already in the cache. Runs with a throw-away HOME/XDG dirs so the real ones are never touched;
the profile's secrets and CA file are created there. Also checks, with -X importtime, that the
exec path imports none of typer, rich, requests, tomlkit, cryptography.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(REPO, "profiles.example.toml")
FORBIDDEN = ("typer", "rich", "requests", "tomlkit", "cryptography", "pypac", "dukpy")


def make_home(root: str) -> dict[str, str]:
    home = os.path.join(root, "home")
    os.makedirs(os.path.join(home, ".config", "kai"), exist_ok=True)
    os.makedirs(os.path.join(home, "certs"), exist_ok=True)
    with open(os.path.join(home, ".config", "kai", "openai.key"), "w") as f:
        f.write("sk-bench\n")
    # Any CA will do for a start-up benchmark: certifi's first root.
    sys.path.insert(0, REPO)
    from kai_launch.trust import certifi_bundle, pem_certificates

    first = pem_certificates(certifi_bundle(), "certifi")[0]
    with open(os.path.join(home, "certs", "corp-root.pem"), "w") as f:
        f.write(first + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "KAI_RUN_"))}
    env.update(
        HOME=home,
        XDG_CONFIG_HOME=os.path.join(root, "config"),
        XDG_CACHE_HOME=os.path.join(root, "cache"),
        XDG_STATE_HOME=os.path.join(root, "state"),
        CORP_PROXY_PASSWORD="bench pass",
        KAI_OAUTH_SECRET="bench secret",
    )
    return env


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def kai_argv(profile: str, config: str = EXAMPLE) -> list[str]:
    # The console script users run; `python -m kai_launch` when it is not installed next to python.
    script = os.path.join(os.path.dirname(sys.executable), "kai-run")
    launcher = [script] if os.path.exists(script) else [sys.executable, "-m", "kai_launch"]
    return [*launcher, "-c", config, "-p", profile, "--", "true"]


def system_config(root: str) -> str:
    """The example file plus a profile that trusts the OS store (ca_mode = "system"): the exec
    path then re-reads and hashes the distribution's bundle (~200 KB) on every run."""
    path = os.path.join(root, "profiles.toml")
    with open(EXAMPLE) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text + '\n[profiles.corp-system]\nextends = "corp-tls"\nca_mode = "system"\n')
        f.write('\n[profiles.corp-jvm]\nextends = "corp-tls"\njvm = true\n')
    return path


def imported_modules(argv: list[str], env: dict[str, str]) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "kai_launch", *argv[argv.index("-c") :]],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    names = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        env = make_home(root)
        base = [sys.executable, "-c", "pass"]
        failed = False
        config = system_config(root)
        for profile, label, target in (
            ("corp", "proxies + secrets", 2.5),
            ("corp-tls", "proxies + secrets + CA bundle (cached)", 3.0),
            ("corp-system", "... + ca_mode = system (OS store, cached)", 3.0),
            ("corp-jvm", "corp-tls + jvm = true (truststore cached)", 3.0),
        ):
            argv = kai_argv(profile, config)
            for _ in range(3):  # warm: parse cache, merged CA bundle, OS file cache
                timed(argv, env)
            leaked = sorted(set(FORBIDDEN) & imported_modules(argv, env))
            ours, theirs = [], []
            for _ in range(args.runs):
                ours.append(timed(argv, env))
                theirs.append(timed(base, env))
            ratio = statistics.median(ours) / statistics.median(theirs)
            ok = ratio <= target and not leaked
            failed |= not ok
            print(
                f"{profile:11} {label:42} kai-run {statistics.median(ours) * 1000:6.1f} ms"
                f"  python -c pass {statistics.median(theirs) * 1000:6.1f} ms"
                f"  ratio {ratio:4.2f}x (target <= {target}x)"
                + (f"  IMPORTS {', '.join(leaked)}" if leaked else "")
                + ("" if ok else "  MISSED")
            )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
