"""How long `kai-run profiles set` takes on a 200-profile file (issue 5: well under half a second).

    .venv/bin/python bench/edit.py [--profiles 200] [--runs 15]

Times, alternating two values so that every run really writes:
- the whole command as a user runs it (`python -m kai_launch -c FILE profiles set ...`),
- `python -c pass` with the same interpreter, for scale,
- the edit alone, in-process (lock, parse, edit, validate, atomic write).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def generate(count: int) -> str:
    """A realistic big file: comments, sub-tables, extends chains, secret references."""
    out = [
        "# Generated for bench/edit.py: many profiles, each with comments and sub-tables.\n\n",
        'default_profile = "p0"\n\n',
        '[profiles.base]\nno_proxy = ["localhost", "127.0.0.1", "::1"]\n',
    ]
    for i in range(count):
        out.append(
            f"\n# Profile {i}: office {i % 17}, egress proxy {i % 5}.\n"
            f"[profiles.p{i}]\n"
            f'extends = "{"base" if i % 10 == 0 else f"p{i - i % 10}"}"\n'
            f'description = "Office {i}"\n'
            f'http_proxy = "http://proxy{i % 5}.corp.example:3128"   # plain proxy\n'
            f'https_proxy = "http://proxy{i % 5}.corp.example:3128"\n'
            f'no_proxy = ["*.office{i}.corp.example", "10.{i % 256}.0.0/16"]\n'
            f'check_urls = ["https://api.openai.com/v1/models"]\n'
            f"\n[profiles.p{i}.proxy_auth]\n"
            f'username = "user{i}"\n'
            'password = { env = "CORP_PROXY_PASSWORD" }\n'
            f"\n[profiles.p{i}.env]   # variables\n"
            f'OFFICE = "{i}"\n'
            'OPENAI_API_KEY = { file = "~/.config/kai/openai.key" }\n'
        )
    return "".join(out)


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=200)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "profiles.toml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(generate(args.profiles))
        size = os.path.getsize(path)
        env = dict(os.environ, XDG_CACHE_HOME=os.path.join(tmp, "cache"))
        # An installed kai-run has its bytecode compiled; so should the run being timed.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        target = f"p{args.profiles // 2}"
        values = ("http://a.example:3128", "http://b.example:3128")
        cli: list[float] = []
        base: list[float] = []
        for i in range(-1, args.runs):  # run -1 warms up (writes the .pyc files)
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "kai_launch", "-c", path, "profiles", "set", target,
                 "https_proxy", values[i % 2]],
                env=env, check=True, capture_output=True,
            )  # fmt: skip
            if i >= 0:
                cli.append(time.perf_counter() - start)
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
            if i >= 0:
                base.append(time.perf_counter() - start)

        from kai_launch import edit

        where = edit.edit_target(path, {})
        core: list[float] = []
        for i in range(args.runs):
            start = time.perf_counter()
            edit.set_value(where, target, "https_proxy", values[i % 2])
            core.append(time.perf_counter() - start)

    print(f"file: {args.profiles} profiles, {size} bytes; {args.runs} runs, medians:")
    print(f"  kai-run profiles set (subprocess): {_median_ms(cli):7.1f} ms")
    print(f"  python -c pass                   : {_median_ms(base):7.1f} ms")
    print(f"  edit.set_value (in-process)      : {_median_ms(core):7.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
