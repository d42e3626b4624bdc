"""mitmproxy addon for tests: inject `X-Corp-Auth` into every request, as a corporate sidecar would.

The value comes from the environment of mitmdump (`KAI_TEST_HEADER_VALUE`), so a test can prove
that the header seen upstream is the one this sidecar added.
"""

from __future__ import annotations

import os

from mitmproxy import http

HEADER = "X-Corp-Auth"


class AddHeader:
    def __init__(self) -> None:
        self.value = os.environ.get("KAI_TEST_HEADER_VALUE", "kai-secret")

    def request(self, flow: http.HTTPFlow) -> None:
        flow.request.headers[HEADER] = self.value


addons = [AddHeader()]
