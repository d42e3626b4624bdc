"""NO_PROXY normalisation: one spelling that requests, httpx, curl and Go all read the same way.

- comma-joined, no spaces, lower case (requests compares against the lower-cased host name);
- `*.x` and `.x` become `x`: every client matches a bare `x` as the domain and its subdomains,
  while `*.x` means nothing to curl and requests, and httpx reads `.x` differently;
- duplicates dropped, and `localhost,127.0.0.1,::1` always present, so a local model is never sent
  to the proxy;
- a CIDR entry is kept (Go, curl, requests and httpx2 honour it) but warned about: httpx (langchain,
  openai SDK 1.x/2.x) and urllib do not, and send such traffic to the proxy.
"""

from __future__ import annotations

ALWAYS_DIRECT = ("localhost", "127.0.0.1", "::1")


def split_entries(value: str | list[str]) -> list[str]:
    """Entries from a list or a comma/space separated string."""
    items = [value] if isinstance(value, str) else value
    out: list[str] = []
    for item in items:
        out.extend(e for e in item.replace(" ", ",").replace("\t", ",").split(",") if e)
    return out


def normalise_entry(entry: str) -> str:
    entry = entry.strip().lower()
    if entry.startswith("[") and "]" in entry:
        # `[::1]` and `[::1]:8080` match nothing in requests or curl, and make httpx 0.28 refuse to
        # build any client: the bare address (all ports) is what every client can read.
        entry = entry[1 : entry.index("]")]
    if entry.startswith("*."):
        entry = entry[2:]
    while entry.startswith("."):
        entry = entry[1:]
    return entry


def is_cidr(entry: str) -> bool:
    if "/" not in entry:
        return False
    import ipaddress  # only when a "/" is present: keeps the exec path lean

    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False
    return True


def is_ipv6_cidr(entry: str) -> bool:
    return ":" in entry and is_cidr(entry)


def normalise_no_proxy(entries: list[str]) -> tuple[str, list[str]]:
    """The NO_PROXY value and the CIDR entries found in it (each worth a warning)."""
    seen: dict[str, None] = {}
    for raw in split_entries(entries):
        entry = normalise_entry(raw)
        if entry:
            seen.setdefault(entry, None)
    for entry in ALWAYS_DIRECT:
        seen.setdefault(entry, None)
    cidrs = [e for e in seen if is_cidr(e)]
    return ",".join(seen), cidrs
