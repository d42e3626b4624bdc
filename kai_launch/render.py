"""The one place that draws results for humans (rich) or prints them as JSON."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from kai_launch.overview import ProfileDetails, ProfileRow


def console(*, stderr: bool = False) -> Console:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Piped output is read by people in logs and by grep: never fold it.
    width = None if stream.isatty() else 10_000
    return Console(stderr=stderr, highlight=False, soft_wrap=False, width=width)


def print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def profiles_table(rows: list[ProfileRow], *, as_json: bool) -> None:
    if as_json:
        print_json([row.__dict__ for row in rows])
        return
    if not rows:
        sys.stdout.write("no profiles defined (create some with `kai-run init`)\n")
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for col in ("PROFILE", "DESCRIPTION", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "FILE"):
        table.add_column(col, overflow="fold")
    for r in rows:
        desc = f"[red]error: {r.error}[/red]" if r.error else r.description
        proxies = (r.http_proxy or "-", r.https_proxy or "-", r.all_proxy or "-")
        table.add_row(r.name, desc, *proxies, f"{r.file} ({r.scope})")
    console().print(table)


def profile_details(details: ProfileDetails, *, as_json: bool) -> None:
    if as_json:
        print_json(details.to_json())
        return
    from rich.markup import escape
    from rich.table import Table

    out = console()
    chain = " -> ".join(f"{n} ({f})" for n, f in details.chain)
    out.print(f"[bold]profile {escape(details.name)}[/bold]  {escape(chain)}")
    for title, entries in (("settings", details.settings), ("variables", details.variables)):
        table = Table(title=title, title_justify="left", box=None, pad_edge=False)
        table.add_column("KEY" if title == "settings" else "VARIABLE", no_wrap=True)
        table.add_column("VALUE", overflow="fold")
        table.add_column("FROM", overflow="fold", style="dim")
        for e in entries:
            value = e.value if isinstance(e.value, str) else json.dumps(e.value)
            table.add_row(escape(e.key), escape(value), escape(e.origin))
        out.print(table)
    if details.unset:
        table = Table(title="removed", title_justify="left", box=None, pad_edge=False)
        table.add_column("VARIABLE", no_wrap=True)
        table.add_column("WHY", style="dim")
        for e in details.unset:
            table.add_row(escape(e.key), escape(e.origin))
        out.print(table)


# --- doctor and route ---------------------------------------------------------------------------

if TYPE_CHECKING:
    from collections.abc import Iterable

    from kai_launch.checks import Check
    from kai_launch.route import RouteReport

_STATUS_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def doctor_report(rows: Iterable[Check], *, total: int | None, as_json: bool) -> list[Check]:
    """Consume doctor's rows as they arrive, then print them all, sorted and grouped by profile.

    While the checks run: a live progress bar when the output goes to a terminal (on stderr
    with --json, so that stdout holds only the JSON), nothing otherwise. Then a rich table on a
    terminal, plain lines elsewhere, or only the JSON list with --json.
    """
    from kai_launch.checks import sort_checks

    live = sys.stderr if as_json else sys.stdout
    checks = _doctor_live(rows, total, stderr=as_json) if live.isatty() else list(rows)
    checks = sort_checks(checks)
    if as_json:
        print_json([c.to_json() for c in checks])
    elif sys.stdout.isatty():
        _doctor_table(checks)
    else:
        sys.stdout.write("".join(line + "\n" for line in doctor_lines(checks)))
    return checks


def _doctor_live(rows: Iterable[Check], total: int | None, *, stderr: bool) -> list[Check]:
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    checks: list[Check] = []
    columns = (
        SpinnerColumn(),
        TextColumn("doctor"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}", markup=True),
    )
    with Progress(*columns, console=console(stderr=stderr), transient=True) as progress:
        task = progress.add_task("", total=total or None)
        for check in rows:
            checks.append(check)
            style = _STATUS_STYLE.get(check.status, "")
            last = f"[{style}]{check.status}[/] {escape(check.profile)} {escape(check.check)}"
            progress.update(task, completed=len(checks), description=last)
    return checks


def _summary(checks: list[Check]) -> str:
    counts = dict.fromkeys(_STATUS_STYLE, 0)
    for c in checks:
        counts[c.status] = counts.get(c.status, 0) + 1
    return "doctor: " + ", ".join(f"{n} {status}" for status, n in counts.items())


def _by_profile(checks: list[Check]) -> dict[str, list[Check]]:
    groups: dict[str, list[Check]] = {}
    for c in checks:
        groups.setdefault(c.profile, []).append(c)
    return groups


def doctor_lines(checks: list[Check]) -> list[str]:
    """Plain, aligned lines grouped by profile (for logs and pipes: no colour, no folding)."""
    lines: list[str] = []
    width_check = max((len(c.check) for c in checks), default=0)
    width_target = min(max((len(c.target or "-") for c in checks), default=0), 48)
    for profile, group in _by_profile(checks).items():
        lines.append(f"profile {profile}")
        for c in group:
            target = c.target or "-"
            lines.append(
                f"  {c.status:<4}  {c.check:<{width_check}}  {target:<{width_target}}  {c.message}"
            )
            if c.hint:
                lines.append(f"  {'':<4}  {'hint:':<{width_check}}  {c.hint}")
    lines.append(_summary(checks))
    return lines


def _doctor_table(checks: list[Check]) -> None:
    from rich.markup import escape
    from rich.table import Table

    out = console()
    for profile, group in _by_profile(checks).items():
        table = Table(
            title=f"profile {escape(profile)}", title_justify="left", box=None, pad_edge=False
        )
        table.add_column("STATUS", no_wrap=True)
        table.add_column("CHECK", no_wrap=True)
        table.add_column("TARGET", overflow="fold", max_width=40)
        table.add_column("MESSAGE", overflow="fold", ratio=1)
        table.add_column("MS", justify="right", style="dim", no_wrap=True)
        for c in group:
            style = _STATUS_STYLE.get(c.status, "")
            message = escape(c.message)
            if c.hint:
                message += f"\n[dim]hint: {escape(c.hint)}[/dim]"
            ms = f"{c.duration_ms:.0f}" if c.duration_ms else ""
            table.add_row(
                f"[{style}]{c.status}[/]", escape(c.check), escape(c.target or "-"), message, ms
            )
        out.print(table)
        out.print()
    out.print(_summary(checks))


def route_report(report: RouteReport, *, as_json: bool) -> None:
    """One row per client (proxy or direct, CA file, why), then each disagreement on one line."""
    if as_json:
        print_json(report.to_json())
        return
    from kai_launch.route import DIRECT, render_text

    if not sys.stdout.isatty():
        sys.stdout.write("".join(line + "\n" for line in render_text(report)))
        return
    from rich.markup import escape
    from rich.table import Table

    out = console()
    table = Table(
        title=f"route for {escape(report.url)}", title_justify="left", box=None, pad_edge=False
    )
    table.add_column("CLIENT", no_wrap=True)
    table.add_column("PROXY", overflow="fold")
    table.add_column("CA FILE", overflow="fold")
    table.add_column("WHY", overflow="fold", style="dim", ratio=1)
    if report.pac is not None:
        from kai_launch.route import PAC_ROW

        pac_route = escape(report.pac.proxy) if report.pac.proxy else f"[green]{DIRECT}[/green]"
        table.add_row(f"[bold]{PAC_ROW}[/bold]", pac_route, "-", escape(report.pac.note))
    for name, c in report.clients.items():
        if c.error:
            proxy = "[bold red]error[/bold red]"  # the WHY column says why: "error: ..."
        else:
            proxy = escape(c.proxy) if c.proxy else f"[green]{DIRECT}[/green]"
        table.add_row(escape(name), proxy, escape(c.ca_file or "-"), escape(c.note))
    out.print(table)
    if report.disagreements:
        out.print("[yellow]disagreements:[/yellow]")
        for line in report.disagreements:
            out.print(f"  - {escape(line)}")
