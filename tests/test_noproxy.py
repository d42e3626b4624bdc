from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kai_launch.noproxy import normalise_no_proxy


@pytest.mark.parametrize(
    ("entries", "expected", "cidrs"),
    [
        ([], "localhost,127.0.0.1,::1", []),
        (
            ["*.corp.example", ".lab.example", "Upper.Example"],
            "corp.example,lab.example,upper.example,localhost,127.0.0.1,::1",
            [],
        ),
        (
            ["a.example, b.example c.example"],
            "a.example,b.example,c.example,localhost,127.0.0.1,::1",
            [],
        ),
        (["x.example", ".x.example", "*.x.example"], "x.example,localhost,127.0.0.1,::1", []),
        (["[::1]", "localhost"], "::1,localhost,127.0.0.1", []),
        (
            ["10.0.0.0/8", "host:8080"],
            "10.0.0.0/8,host:8080,localhost,127.0.0.1,::1",
            ["10.0.0.0/8"],
        ),
        (["*"], "*,localhost,127.0.0.1,::1", []),
    ],
)
def test_normalisation(entries, expected, cidrs):
    assert normalise_no_proxy(entries) == (expected, cidrs)


@given(st.lists(st.from_regex(r"[A-Za-z0-9.*\-]{0,20}", fullmatch=True), max_size=8))
def test_normal_form_is_stable(entries):
    value, _ = normalise_no_proxy(entries)
    assert " " not in value
    items = value.split(",")
    assert len(items) == len(set(items))
    assert {"localhost", "127.0.0.1", "::1"} <= set(items)
    assert not any(i.startswith((".", "*.")) for i in items)
    assert normalise_no_proxy(items)[0] == value
