"""A mitmproxy addon that adds a corporate authentication header to requests, as a sidecar.

Some gateways want every request to carry a header (here `X-Corp-Auth`) that Kai and the SDKs
it uses know nothing about. Run mitmproxy with this addon next to Kai and point Kai at it; with
kai-run, the profile's `sidecar` table does both (see profiles.example.toml, `local-mitm`):

    [profiles.local-mitm.sidecar]
    command = ["mitmdump", "--listen-host", "127.0.0.1", "-p", "8080",
               "-s", "~/kai/add_auth_header.py", "--set", "corp_auth_hosts=api.openai.com"]
    ready = "127.0.0.1:8080"
    env = { CORP_AUTH_TOKEN = { env = "CORP_AUTH_TOKEN" } }

Or by hand: `CORP_AUTH_TOKEN=... mitmdump -s add_auth_header.py`.

The value comes from the environment variable CORP_AUTH_TOKEN, never from a file in a repository.
Options (`--set NAME=VALUE`):
- corp_auth_header: the header's name (default X-Corp-Auth);
- corp_auth_hosts: comma-separated host names that get the header (a name also covers its
  subdomains); empty (the default) means every host. Limit it: whatever host a client talks
  to through the proxy would otherwise see the token.
Without CORP_AUTH_TOKEN (or with an empty one) mitmdump stops at start-up with an error, before
it listens: a misconfigured sidecar fails before Kai sends a single request, and kai-run shows
the end of the sidecar's log.
"""

from __future__ import annotations

import os
import sys

from mitmproxy import ctx, http
from mitmproxy.addonmanager import Loader

TOKEN_VARIABLE = "CORP_AUTH_TOKEN"


class AddAuthHeader:
    def __init__(self) -> None:
        self.token = ""
        self.hosts: tuple[str, ...] = ()

    def load(self, loader: Loader) -> None:
        loader.add_option("corp_auth_header", str, "X-Corp-Auth", "Name of the header to add.")
        loader.add_option(
            "corp_auth_hosts",
            str,
            "",
            "Comma-separated hosts (and their subdomains) that get the header; empty: all.",
        )

    def configure(self, updated: set[str]) -> None:
        if "corp_auth_hosts" in updated:
            raw = ctx.options.corp_auth_hosts
            self.hosts = tuple(h.strip().lower().lstrip(".") for h in raw.split(",") if h.strip())
        if not self.token:
            self.token = os.environ.get(TOKEN_VARIABLE, "")
            if not self.token:
                # Not OptionsError: mitmdump only logs that, opens its port anyway and exits
                # a moment later, after clients may have taken it for ready. This stops it
                # before it listens.
                print(f"add_auth_header: {TOKEN_VARIABLE} is not set", file=sys.stderr)
                raise SystemExit(1)

    def _wanted(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return not self.hosts or any(host == h or host.endswith("." + h) for h in self.hosts)

    def request(self, flow: http.HTTPFlow) -> None:
        # pretty_host is the Host header's name: the one the client asked for.
        if self.token and self._wanted(flow.request.pretty_host):
            flow.request.headers[ctx.options.corp_auth_header] = self.token


addons = [AddAuthHeader()]
