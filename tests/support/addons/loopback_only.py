"""mitmproxy addon loaded into every test mitmdump: refuse any destination that is not loopback.

Tests may only reach 127.0.0.1, ::1 and localhost. mitmproxy would otherwise resolve and dial
whatever a client asks for (a `.invalid` name included), so the refusal happens in the
`http_connect` and `request` hooks, which run before mitmproxy opens a server connection.
"""

from __future__ import annotations

import ipaddress

from mitmproxy import http

GUARD_HEADER = "X-Kai-Test-Guard"


def is_loopback(host: str) -> bool:
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LoopbackOnly:
    def _refuse(self, flow: http.HTTPFlow) -> None:
        # An earlier addon (proxyauth's 407) has the first word.
        if flow.response is None and not is_loopback(flow.request.host):
            flow.response = http.Response.make(
                502,
                f"kai-run test mitmdump: refusing non-loopback destination "
                f"{flow.request.host}:{flow.request.port}\n",
                {GUARD_HEADER: "refused", "Content-Type": "text/plain"},
            )

    def http_connect(self, flow: http.HTTPFlow) -> None:
        self._refuse(flow)

    def request(self, flow: http.HTTPFlow) -> None:
        self._refuse(flow)


addons = [LoopbackOnly()]
