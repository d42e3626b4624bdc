"""pytest fixtures over tests/support: load with `pytest_plugins = ["support.fixtures"]`."""

from __future__ import annotations

import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import pytest

from support.mitm import MitmDump, MitmError, ensure_mitmdump
from support.servers import HangingServer, OpenAIUpstream, Socks5Server


class MitmFactory(Protocol):
    def __call__(
        self,
        proxyauth: str | None = None,
        upstream_ca: Path | str | None = None,
        addon: Path | str | None = None,
        *,
        env: Mapping[str, str] | None = None,
        options: Mapping[str, str] | None = None,
    ) -> MitmDump: ...


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[OpenAIUpstream]:
    """An OpenAI-compatible HTTPS API at `upstream.url` (https://localhost:PORT)."""
    with OpenAIUpstream(workdir=tmp_path / "upstream") as server:
        yield server


@pytest.fixture
def plain_upstream(tmp_path: Path) -> Iterator[OpenAIUpstream]:
    """The same API over plain HTTP (http://localhost:PORT)."""
    with OpenAIUpstream(tls=False, workdir=tmp_path / "plain-upstream") as server:
        yield server


@pytest.fixture(scope="session")
def mitm_binary() -> Path:
    """Path to mitmdump; installs <repo>/.venv-mitm on first use if nothing else is found."""
    try:
        return ensure_mitmdump()
    except MitmError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def mitmdump(mitm_binary: Path, tmp_path: Path) -> Iterator[MitmFactory]:
    """Factory: `mitmdump(proxyauth=None, upstream_ca=None, addon=None, *, env=, options=)`.

    Each call starts a real mitmdump (confdir under tmp_path, so its log survives a failure)
    and returns it ready; all are stopped at teardown, and teardown fails if one survives.
    """
    started: list[MitmDump] = []

    def factory(
        proxyauth: str | None = None,
        upstream_ca: Path | str | None = None,
        addon: Path | str | None = None,
        *,
        env: Mapping[str, str] | None = None,
        options: Mapping[str, str] | None = None,
    ) -> MitmDump:
        m = MitmDump(
            mitm_binary,
            confdir=tmp_path / f"mitm{len(started)}",
            proxyauth=proxyauth,
            upstream_ca=upstream_ca,
            addons=[addon] if addon is not None else [],
            env=env,
            options=options,
        )
        started.append(m)
        return m.start()

    yield factory
    errors: list[str] = []
    for m in started:
        try:
            m.stop()
        except MitmError as exc:
            errors.append(str(exc))
    if errors:
        pytest.fail("; ".join(errors), pytrace=False)


@pytest.fixture
def hanging_server() -> Iterator[HangingServer]:
    """A loopback TCP port that accepts connections and never answers."""
    with HangingServer() as server:
        yield server


@pytest.fixture
def socks5_server() -> Iterator[Socks5Server]:
    """A no-auth SOCKS5 proxy on 127.0.0.1 that only connects to loopback destinations."""
    with Socks5Server() as server:
        yield server


def is_loopback_name(host: object) -> bool:
    if not isinstance(host, str):
        return host is None
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost":
        return True
    import ipaddress

    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@pytest.fixture
def resolver_guard(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Refuse (and record) any lookup of a non-loopback name in this process: the network rule,
    enforced for code that runs in-process (doctor's probes, PAC fetches)."""
    refused: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not is_loopback_name(host):
            refused.append(str(host))
            raise socket.gaierror(socket.EAI_NONAME, f"test guard: no lookup of {host}")
        return real(host, *args, **kwargs)

    def gethostbyname(host: str) -> str:
        if is_loopback_name(host):
            return "127.0.0.1"
        refused.append(host)
        raise socket.gaierror(socket.EAI_NONAME, f"test guard: no lookup of {host}")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket, "gethostbyname", gethostbyname)
    return refused
