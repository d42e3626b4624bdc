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
    # Piped output is read by people in logs and by grep: don't fold it at 80 columns.
    width = None if stream.isatty() else 160
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
    for col in ("PROFILE", "DESCRIPTION", "HTTP_PROXY", "HTTPS_PROXY", "FILE"):
        table.add_column(col, overflow="fold")
    for r in rows:
        desc = f"[red]error: {r.error}[/red]" if r.error else r.description
        table.add_row(
            r.name, desc, r.http_proxy or "-", r.https_proxy or "-", f"{r.file} ({r.scope})"
        )
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
