from __future__ import annotations

import pytest

from kai_launch.proxyurl import redact_arg, redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://proxy:3128", "http://proxy:3128"),
        ("http://jdoe:pw@proxy:3128", "http://jdoe:***@proxy:3128"),
        ("http://jdoe:pa/ss#x?y@proxy:3128", "http://jdoe:***@proxy:3128"),
        ("jdoe:pw@proxy:3128", "jdoe:***@proxy:3128"),
        ("http://TOKEN@proxy:3128", "http://***@proxy:3128"),
        ("socks5h://u:p%40ss@[::1]:1080", "socks5h://u:***@[::1]:1080"),
    ],
)
def test_redact_url(url, shown):
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    ("arg", "shown"),
    [
        ("--mode=upstream:http://corp:PW@p:3128", "--mode=upstream:http://corp:***@p:3128"),
        ("proxyauth=kai:PW@/#", "proxyauth=kai:***"),
        ("--set", "--set"),
        ("-p", "-p"),
    ],
)
def test_redact_arg(arg, shown):
    assert redact_arg(arg) == shown


def test_sidecar_command_line_in_its_log_hides_credentials():
    from kai_launch.sidecar import _shown

    line = _shown(["mitmdump", "--set", "proxyauth=kai:PW-1", "--mode=upstream:http://c:PW-2@p:1"])
    assert "PW-1" not in line and "PW-2" not in line
    assert "proxyauth=kai:***" in line and "c:***@p:1" in line
