"""doctor's `jvm.*` checks, for a profile with `jvm = true`.

kai-run's other warnings about the JVM (CIDR ranges Java cannot express, an https:// proxy it
cannot reach, JDK_JAVA_OPTIONS overriding kai-run's options) are printed when the profile is used;
doctor shows them as rows with hints, from the child environment it would get:

- `jvm.options`: what the JVM gets (proxy per scheme, how many hosts go direct, credentials),
  warn when part of the profile cannot reach the JVM;
- `jvm.truststore`: the PKCS12 truststore exists, its MAC verifies with the password the JVM is
  given, and it holds the profile's CAs (read with `cryptography`, as the JDK would read it).
"""

from __future__ import annotations

import time
import warnings
from typing import TYPE_CHECKING

from kai_launch import jvm
from kai_launch.checks import FAIL, OK, WARN, Check

if TYPE_CHECKING:
    from collections.abc import Mapping

    from kai_launch.profiles import Profile


def check_jvm(profile: Profile, child: Mapping[str, str]) -> list[Check]:
    name = profile.name
    where = f"profile '{name}' ({profile.path})"
    value = child.get(jvm.JAVA_TOOL_OPTIONS, "")
    props: dict[str, str] = {}
    for _, _, option in jvm.split_java_options(value):
        if option.startswith("-D"):
            key, _, v = option[2:].partition("=")
            props[key] = v
    options = jvm.jvm_options(
        {
            field: child.get(field) or child.get(field.upper())
            for field in ("http_proxy", "https_proxy", "all_proxy")
        },
        child.get("no_proxy") or child.get("NO_PROXY") or "",
        props.get("javax.net.ssl.trustStore"),
    )
    problems = list(options.warnings)
    for other in jvm.OVERRIDING_VARIABLES:
        clash = jvm.owned_keys_in(child.get(other, ""), options)
        if clash:
            problems.append(f"{other} sets {', '.join(clash)} and wins over JAVA_TOOL_OPTIONS")
    got = dict(options.options)
    missing = [k for k, v in got.items() if props.get(k) != v and k != "javax.net.ssl.trustStore"]
    if missing:
        problems.append(
            f"JAVA_TOOL_OPTIONS lacks or changes {', '.join(missing[:4])}"
            f"{' and more' if len(missing) > 4 else ''} (replaced with --set, or by env?)"
        )
    out = [_options_check(name, where, got, problems)]
    if profile.ca_bundle:
        out.append(_truststore_check(name, where, props, child.get("NODE_EXTRA_CA_CERTS")))
    return out


def _options_check(name: str, where: str, got: dict[str, str], problems: list[str]) -> Check:
    parts = []
    for scheme in ("http", "https"):
        if f"{scheme}.proxyHost" in got:
            parts.append(f"{scheme} via {got[f'{scheme}.proxyHost']}:{got[f'{scheme}.proxyPort']}")
    if "socksProxyHost" in got:
        parts.append(f"SOCKS via {got['socksProxyHost']}:{got['socksProxyPort']}")
    if "http.nonProxyHosts" in got:
        direct = [h for h in got["http.nonProxyHosts"].split("|") if h and not h.startswith("*.")]
        parts.append(f"{len(direct)} hosts direct")
    if "jdk.http.auth.tunneling.disabledSchemes" in got:
        parts.append("proxy credentials, Basic allowed over CONNECT")
    elif any(k.endswith(("proxyUser", "socks.username")) for k in got):
        parts.append("proxy credentials")
    if "javax.net.ssl.trustStore" in got:
        parts.append("a truststore")
    summary = "; ".join(parts) or "no proxy and no truststore"
    if not problems:
        return Check(name, "jvm.options", "JAVA_TOOL_OPTIONS", OK, f"the JVM gets {summary}")
    return Check(
        name,
        "jvm.options",
        "JAVA_TOOL_OPTIONS",
        WARN,
        f"the JVM gets {summary}, but: " + "; ".join(problems),
        f"see the README's 'Java, Maven and Gradle'; fix no_proxy or the proxies in {where}",
    )


def _truststore_check(
    name: str, where: str, props: dict[str, str], own_bundle: str | None
) -> Check:
    path = props.get("javax.net.ssl.trustStore")
    if not path:
        return Check(
            name,
            "jvm.truststore",
            None,
            FAIL,
            "the profile has a ca_bundle, but JAVA_TOOL_OPTIONS names no truststore",
            f"do not replace JAVA_TOOL_OPTIONS (--set, env) in {where}",
        )
    start = time.monotonic()
    from cryptography.hazmat.primitives.serialization import pkcs12

    password = props.get("javax.net.ssl.trustStorePassword", "")
    try:
        with open(path, "rb") as f, warnings.catch_warnings():
            # Some public roots have a negative serial number; the JDK reads them anyway.
            warnings.simplefilter("ignore")
            loaded = pkcs12.load_pkcs12(f.read(), password.encode())
    except (OSError, ValueError) as e:
        why = e.strerror if isinstance(e, OSError) else "not a PKCS12 file for that password"
        return Check(
            name,
            "jvm.truststore",
            path,
            FAIL,
            f"the JVM cannot load its truststore {path}: {why}",
            "delete the file: kai-run writes it again on the next run",
            (time.monotonic() - start) * 1000,
        )
    from cryptography.hazmat.primitives.serialization import Encoding

    from kai_launch.pkcs12 import pem_to_der

    held = {c.certificate.public_bytes(Encoding.DER) for c in loaded.additional_certs}
    own: list[bytes] = []
    if own_bundle:
        try:
            with open(own_bundle, encoding="latin-1") as f:
                own = pem_to_der(f.read())
        except OSError:
            own = []
    absent = [der for der in own if der not in held]
    if absent:
        return Check(
            name,
            "jvm.truststore",
            path,
            FAIL,
            f"the truststore {path} lacks {len(absent)} of the profile's {len(own)} CAs",
            "delete the file: kai-run writes it again on the next run",
            (time.monotonic() - start) * 1000,
        )
    count = len(held)
    plural = "CA" if len(own) == 1 else "CAs"
    ours = f" (the profile's {len(own)} {plural} among them)" if own else ""
    return Check(
        name,
        "jvm.truststore",
        path,
        OK,
        f"{count} trusted certificates{ours} in {path}, PKCS12, integrity checked",
        None,
        (time.monotonic() - start) * 1000,
    )
