"""The JVM: proxy and trust settings as `-D` options, because Java ignores HTTP_PROXY and friends.

Java reads its proxies from system properties (`http.proxyHost`, `https.proxyHost`,
`socksProxyHost`, `http.nonProxyHosts`, ...) and its CAs from a keystore
(`javax.net.ssl.trustStore`), never from the variables every other client reads. With
`jvm = true` a profile's resolved proxies, NO_PROXY and merged CA bundle become such options,
appended to JAVA_TOOL_OPTIONS (read by every JVM at start) and MAVEN_OPTS (read by `mvn`).

- Idempotent: before appending, the options kai-run owns are removed from what the variable
  held, so a kai-run inside a kai-run does not pile up duplicates. The proxy options are always
  owned (the profile decides the JVM's proxies, as it decides HTTP_PROXY); the trust options only
  when the profile brings a truststore.
- NO_PROXY becomes `http.nonProxyHosts` in Java's syntax: `|`-separated, a domain `x` as both `x`
  and `*.x`, IPv6 addresses in brackets (the form the JDK compares against), CIDR ranges dropped
  (Java has no such syntax) and ports dropped (Java matches hosts only), each with a warning.
- Credentials become `http(s).proxyUser/Password` (read by Gradle, Maven's wagon, Apache
  HttpClient with system properties, and any Authenticator that looks for them; the JDK itself
  reads none of them) and `java.net.socks.username/password` (read by the JDK's SOCKS client).
  With credentials, `jdk.http.auth.tunneling.disabledSchemes=` re-enables Basic authentication for
  CONNECT, which JDK 8u111 and later refuse by default.
- Quoting: JAVA_TOOL_OPTIONS is split by the JVM itself, which (JDK 9+) honours '...' and "..."
  with no escape character. MAVEN_OPTS is split by the `mvn` shell script with no quote handling
  at all, so an option holding whitespace cannot be carried there and is left out (the JVM that
  `mvn` starts reads JAVA_TOOL_OPTIONS too).
"""

from __future__ import annotations

import os

from kai_launch.proxyurl import parse_proxy_url, redact_url

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from kai_launch.environ import EnvPlan
    from kai_launch.profiles import Profile

JAVA_TOOL_OPTIONS = "JAVA_TOOL_OPTIONS"
MAVEN_OPTS = "MAVEN_OPTS"
JVM_VARIABLES = (JAVA_TOOL_OPTIONS, MAVEN_OPTS)
# Read by the JVM (`_JAVA_OPTIONS`) or the `java` launcher (`JDK_JAVA_OPTIONS`, JDK 9+) after
# JAVA_TOOL_OPTIONS: a -D there wins over kai-run's.
OVERRIDING_VARIABLES = ("JDK_JAVA_OPTIONS", "_JAVA_OPTIONS")

# Every property kai-run may set for the proxies: all are removed from the base value, so that a
# proxy (or a password) from an outer profile cannot survive into one that has none.
PROXY_KEYS = (
    "http.proxyHost",
    "http.proxyPort",
    "http.proxyUser",
    "http.proxyPassword",
    "https.proxyHost",
    "https.proxyPort",
    "https.proxyUser",
    "https.proxyPassword",
    "http.nonProxyHosts",
    "socksProxyHost",
    "socksProxyPort",
    "socksProxyVersion",
    "socksNonProxyHosts",
    "java.net.socks.username",
    "java.net.socks.password",
    "jdk.http.auth.tunneling.disabledSchemes",
    "jdk.http.auth.proxying.disabledSchemes",
)
TRUST_KEYS = (
    "javax.net.ssl.trustStore",
    "javax.net.ssl.trustStoreType",
    "javax.net.ssl.trustStorePassword",
)
_WHITESPACE = " \t\n\v\f\r"  # C isspace(), what the JVM splits JAVA_TOOL_OPTIONS on
_SECRET_WORDS = ("password", "secret", "token")
_USER_KEYS = {
    "http.proxyUser": "http.proxyPassword",
    "https.proxyUser": "https.proxyPassword",
    "java.net.socks.username": "java.net.socks.password",
}


class JvmOptions:
    """The `-D` options for a profile, as (property, value) pairs, and what to warn about."""

    __slots__ = ("options", "owned", "warnings")

    def __init__(self) -> None:
        self.options: list[tuple[str, str]] = []
        self.warnings: list[str] = []
        self.owned: tuple[str, ...] = PROXY_KEYS  # the keys to remove from the base value

    def add(self, key: str, value: str) -> None:
        self.options.append((key, value))


# --- from proxies, NO_PROXY and a truststore to options ------------------------------------


def jvm_options(
    proxies: Mapping[str, str | None],
    no_proxy: str,
    truststore: str | None,
    truststore_password: str | None = None,
    *,
    origins: Mapping[str, str] | None = None,
) -> JvmOptions:
    """Options for the resolved proxy URLs (`http_proxy`, `https_proxy`, `all_proxy`: credentials
    inside, percent-encoded), the final NO_PROXY value and the PKCS12 truststore's path.
    `origins` names where each URL came from, for the error about one that is not a proxy URL."""
    out = JvmOptions()
    fallback = proxies.get("all_proxy") or None
    socks: list[tuple[str, str]] = []  # (url, which setting it came from)
    has_proxy = False
    credentials = False
    for prefix, field in (("http", "http_proxy"), ("https", "https_proxy")):
        url = proxies.get(field) or fallback
        if not url:
            continue
        source = field if proxies.get(field) else "all_proxy"
        parsed, _ = parse_proxy_url(url, (origins or {}).get(source) or source)
        if parsed.scheme.startswith("socks"):
            # https:// traffic is most of it: its proxy wins when Java can have only one.
            socks.insert(len(socks) if prefix == "http" else 0, (url, source))
            continue
        if parsed.scheme == "https":
            out.warnings.append(
                f"{source} {redact_url(url)} is an https:// proxy (TLS to the proxy): Java "
                f"cannot speak TLS to a proxy, so the JVM gets no {prefix}.proxyHost and "
                f"connects to {prefix}:// URLs directly; use an http:// proxy URL for it"
            )
            continue
        has_proxy = True
        out.add(f"{prefix}.proxyHost", parsed.host)
        out.add(f"{prefix}.proxyPort", str(parsed.effective_port))
        if parsed.username is not None:
            credentials = True
            out.add(f"{prefix}.proxyUser", unquote(parsed.username))
            if parsed.password is not None:
                out.add(f"{prefix}.proxyPassword", unquote(parsed.password))
    if socks:
        has_proxy = True
        url, source = socks[0]
        parsed, _ = parse_proxy_url(url, source)  # checked above
        for other, other_source in socks[1:]:
            o, _ = parse_proxy_url(other, other_source)
            if (o.host, o.effective_port) != (parsed.host, parsed.effective_port):
                out.warnings.append(
                    f"the JVM has one SOCKS proxy: it uses {redact_url(url)} ({source}), "
                    f"not {redact_url(other)} ({other_source})"
                )
        out.add("socksProxyHost", parsed.host)
        out.add("socksProxyPort", str(parsed.effective_port))
        if parsed.scheme in ("socks4", "socks4a"):
            out.add("socksProxyVersion", "4")
        if parsed.username is not None:
            out.add("java.net.socks.username", unquote(parsed.username))
            if parsed.password is not None:
                out.add("java.net.socks.password", unquote(parsed.password))
    if has_proxy:
        hosts, warnings = non_proxy_hosts(no_proxy)
        out.warnings.extend(warnings)
        out.add("http.nonProxyHosts", hosts)
        if socks:
            # For plain sockets (JDBC drivers and the like) Java reads this one instead.
            out.add("socksNonProxyHosts", hosts)
    if credentials:
        # Since 8u111 the JDK refuses Basic proxy authentication (tunneling: for CONNECT, i.e.
        # every https:// URL; proxying: for plain http://). Empty lists allow it again.
        out.add("jdk.http.auth.tunneling.disabledSchemes", "")
        out.add("jdk.http.auth.proxying.disabledSchemes", "")
    if truststore is not None:
        from kai_launch.pkcs12 import TRUSTSTORE_PASSWORD

        out.owned = PROXY_KEYS + TRUST_KEYS
        out.add("javax.net.ssl.trustStore", truststore)
        out.add("javax.net.ssl.trustStoreType", "PKCS12")
        out.add("javax.net.ssl.trustStorePassword", truststore_password or TRUSTSTORE_PASSWORD)
    return out


def unquote(text: str) -> str:
    """Percent-decoding (UTF-8), without urllib.parse: its import costs the exec path."""
    if "%" not in text:
        return text
    out = bytearray()
    i = 0
    while i < len(text):
        c = text[i]
        if c == "%" and _is_hex(text[i + 1 : i + 3]):
            out.append(int(text[i + 1 : i + 3], 16))
            i += 3
            continue
        out += c.encode("utf-8")
        i += 1
    return out.decode("utf-8", "replace")


def _is_hex(pair: str) -> bool:
    return len(pair) == 2 and all(c in "0123456789abcdefABCDEF" for c in pair)


def non_proxy_hosts(no_proxy: str) -> tuple[str, list[str]]:
    """NO_PROXY (comma-separated, as kai-run writes it) in the syntax of `http.nonProxyHosts`."""
    from kai_launch.noproxy import is_cidr

    out: dict[str, None] = {}
    cidrs: list[str] = []
    ports: list[str] = []
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry.startswith("[") and "]" in entry:
            tail = entry[entry.index("]") + 1 :]
            if tail.startswith(":"):
                ports.append(entry)
            entry = entry[1 : entry.index("]")]
        elif entry.count(":") == 1:
            host, _, port = entry.partition(":")
            if port.isdecimal() and host:
                ports.append(entry)
                entry = host
        if is_cidr(entry):
            cidrs.append(entry)
            continue
        if entry == "*" or "*" in entry:
            out.setdefault(entry, None)  # already a pattern: `*`, `10.*`
        elif ":" in entry:
            out.setdefault(f"[{entry}]", None)  # IPv6: the JDK compares against "[::1]"
        elif _is_ipv4(entry):
            out.setdefault(entry, None)
        else:
            entry = entry.lstrip(".")
            out.setdefault(entry, None)
            out.setdefault(f"*.{entry}", None)
    warnings: list[str] = []
    if cidrs:
        warnings.append(
            f"NO_PROXY has CIDR {'ranges' if len(cidrs) > 1 else 'range'} {', '.join(cidrs)}: "
            "Java's http.nonProxyHosts has no such syntax, so the JVM sends those addresses to "
            "the proxy; list the hosts (or a prefix such as 10.*) in no_proxy as well"
        )
    if ports:
        warnings.append(
            f"NO_PROXY entry {', '.join(ports)} names a port: Java's http.nonProxyHosts matches "
            "hosts only, so the JVM goes direct to that host on every port"
        )
    return "|".join(out), warnings


def _is_ipv4(entry: str) -> bool:
    parts = entry.split(".")
    return len(parts) == 4 and all(p.isdecimal() and int(p) < 256 for p in parts)


# --- into JAVA_TOOL_OPTIONS and MAVEN_OPTS -------------------------------------------------


def split_java_options(text: str) -> list[tuple[int, int, str]]:
    """(start, end, option) for each option in JAVA_TOOL_OPTIONS, split as HotSpot does
    (Arguments::parse_options_buffer): at whitespace, where '...' and "..." group (quotes
    removed, no escapes). An unmatched quote runs to the end (the JVM refuses to start then)."""
    out: list[tuple[int, int, str]] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in _WHITESPACE:
            i += 1
        if i >= n:
            break
        start = i
        value: list[str] = []
        while i < n and text[i] not in _WHITESPACE:
            c = text[i]
            if c in "'\"":
                close = text.find(c, i + 1)
                close = n if close < 0 else close
                value.append(text[i + 1 : close])
                i = close + 1
            else:
                value.append(c)
                i += 1
        out.append((start, min(i, n), "".join(value)))
    return out


def split_maven_opts(text: str, *, windows: bool = os.name == "nt") -> list[tuple[int, int, str]]:
    """(start, end, word) for MAVEN_OPTS as `mvn` splits it: at whitespace, quotes kept as
    literal characters (POSIX `$MAVEN_OPTS`); on Windows "..." groups and the quotes go (cmd and
    the Java launcher)."""
    out: list[tuple[int, int, str]] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t\n":
            i += 1
        start = i
        word: list[str] = []
        while i < n and text[i] not in " \t\n":
            if windows and text[i] == '"':
                close = text.find('"', i + 1)
                close = n if close < 0 else close
                word.append(text[i + 1 : close])
                i = close + 1
                continue
            word.append(text[i])
            i += 1
        if i > start:
            out.append((start, min(i, n), "".join(word)))
    return out


def quote_java_option(option: str) -> str:
    """The option as one JAVA_TOOL_OPTIONS word: quoted only when it holds whitespace or a quote.
    With no escape character, a `"` goes inside '...' and everything else inside "..."."""
    if not any(c in _WHITESPACE or c in "'\"" for c in option):
        return option
    parts: list[str] = []
    run: list[str] = []
    quote = ""
    for c in option:
        wanted = "'" if c == '"' else '"'
        if wanted != quote and run:
            parts.append(f"{quote}{''.join(run)}{quote}")
            run = []
        quote = wanted
        run.append(c)
    parts.append(f"{quote}{''.join(run)}{quote}")
    return "".join(parts)


def maven_word(option: str, *, windows: bool = os.name == "nt") -> str | None:
    """The option as one MAVEN_OPTS word, or None when `mvn` would split it.

    POSIX `mvn` expands $MAVEN_OPTS unquoted: split at whitespace, quotes kept literally, so a
    value with whitespace cannot be written at all. `mvn.cmd` pastes %MAVEN_OPTS% into a cmd
    line, where `|`, `&`, `<`, `>` and `^` are operators unless inside "...", and the Java
    launcher removes the quotes again.
    """
    if windows:
        if '"' in option:
            return None
        if any(c in option for c in ' \t|&<>^"'):
            return f'"{option}"'
        return option
    if any(c in option for c in " \t\n"):
        return None
    return option


def _key_of(option: str) -> str | None:
    if not option.startswith("-D"):
        return None
    return option[2:].partition("=")[0]


def append_options(
    name: str, base: str, jvm: JvmOptions, *, windows: bool = os.name == "nt"
) -> tuple[str, list[str]]:
    """`base` (the variable's value before kai-run) without the options kai-run owns, then
    kai-run's options; and warnings (options MAVEN_OPTS cannot carry)."""
    owned = set(jvm.owned)
    words = (
        split_java_options(base)
        if name == JAVA_TOOL_OPTIONS
        else split_maven_opts(base, windows=windows)
    )
    kept = [base[s:e] for s, e, option in words if _key_of(option) not in owned]
    warnings: list[str] = []
    for key, value in jvm.options:
        option = f"-D{key}={value}"
        if name == JAVA_TOOL_OPTIONS:
            kept.append(quote_java_option(option))
            continue
        word = maven_word(option, windows=windows)
        if word is None:
            warnings.append(
                f"{MAVEN_OPTS} leaves out -D{key}: its value holds whitespace (or a quote), which "
                f"the mvn script splits; the JVM that mvn starts still gets it from "
                f"{JAVA_TOOL_OPTIONS}"
            )
            continue
        kept.append(word)
    return " ".join(kept), warnings


def owned_keys_in(text: str, jvm: JvmOptions) -> list[str]:
    """The properties kai-run sets (this time) that `text` (JDK_JAVA_OPTIONS, _JAVA_OPTIONS) sets
    as well, each once."""
    ours = {key for key, _ in jvm.options}
    found = (_key_of(option) for _, _, option in split_java_options(text))
    return list(dict.fromkeys(k for k in found if k in ours))


def mask_options(name: str, value: str) -> str:
    """JAVA_TOOL_OPTIONS or MAVEN_OPTS as humans may see it: `-Dhttp.proxyPassword=***`, and the
    same for any property whose name says password, secret or token. A proxy user name without
    a password is hidden too: alone, it is usually a token (as `redact_url` reads `http://T@host`)."""
    split = split_java_options if name == JAVA_TOOL_OPTIONS else split_maven_opts
    words = split(value)
    keys = {_key_of(option) for _, _, option in words}
    lone_users = {user for user, pw in _USER_KEYS.items() if pw not in keys}
    out: list[str] = []
    last = 0
    for start, end, option in words:
        key = _key_of(option)
        if key is not None and (key in lone_users or any(w in key.lower() for w in _SECRET_WORDS)):
            out.append(value[last:start] + f"-D{key}=***")
        else:
            out.append(value[last:end])
        last = end
    out.append(value[last:])
    return "".join(out)


# --- into the plan (called by environ.build_plan) ------------------------------------------


def apply_jvm(profile: Profile, environ: Mapping[str, str], plan: EnvPlan) -> None:
    """`jvm = true`: the plan's resolved proxies, NO_PROXY and merged CA bundle as -D options,
    appended to JAVA_TOOL_OPTIONS and MAVEN_OPTS. Runs after the profile's `env` is in the plan
    and before `--set`/`--unset`, which replace or remove the whole variable."""
    from kai_launch.environ import NO_PROXY_VARIABLES, PROXY_VARIABLES

    def planned(names: tuple[str, ...]) -> str:
        # The lower-case spelling first, as curl and requests read it.
        found = [plan.assign[n].value for n in reversed(names) if n in plan.assign]
        return next((v for v in found if v), "")

    def origin_of(names: tuple[str, ...]) -> str:
        # A URL that is not a proxy URL can only come from the profile's `env` (the proxy keys
        # are checked when they are read): name that key.
        name = next((n for n in reversed(names) if n in plan.assign and plan.assign[n].value), "")
        return f"{plan.assign[name].origin}, key 'env.{name}'" if name else ""

    truststore = None
    bundle = plan.assign.get("SSL_CERT_FILE")
    if (profile.ca_bundle or profile.ca_mode == "system") and bundle is not None and bundle.value:
        # The bundle every other client trusts (absent when bundles were not built). In system
        # mode it holds the roots MDM installed, which the JDK's own cacerts usually lacks.
        from kai_launch.trust import build_truststore

        truststore = build_truststore(bundle.value, bundle.origin)
    options = jvm_options(
        {field: planned(names) for field, names in PROXY_VARIABLES},
        planned(NO_PROXY_VARIABLES),
        truststore,
        origins={field: origin_of(names) for field, names in PROXY_VARIABLES},
    )
    plan.warnings.extend(options.warnings)
    if profile.insecure:
        plan.warnings.append(
            "insecure = true does not reach the JVM: it still verifies TLS (add the proxy's CA "
            "to ca_bundle: the JVM then trusts it through the truststore)"
        )
    origin = f"jvm = true, {profile.origins.get('jvm', profile.path)}"
    for name in JVM_VARIABLES:
        current = plan.assign.get(name)
        secret = False
        if current is not None:
            base, secret, via = current.value, current.secret, f"{origin} + {current.origin}"
        elif plan.clean_env or name in plan.removals:
            base, via = "", origin
        else:
            base = environ.get(name, "")
            via = f"{origin} + parent environment" if base else origin
        value, warnings = append_options(name, base, options)
        plan.warnings.extend(warnings)
        if value:
            plan.set(name, value, via, secret=secret)
        elif base or name in environ:
            # Even an empty JAVA_TOOL_OPTIONS makes every JVM print "Picked up ...".
            plan.remove(name, f"{origin}: no options left")
    for name in OVERRIDING_VARIABLES:
        current = plan.assign.get(name)
        if current is not None:
            text = current.value
        elif plan.clean_env or name in plan.removals:
            continue
        else:
            text = environ.get(name, "")
        clash = owned_keys_in(text, options)
        if clash:
            plan.warnings.append(
                f"{name} sets {', '.join(clash)}, and the JVM reads it after JAVA_TOOL_OPTIONS: "
                f"it overrides kai-run's options; remove them there, or add {name} to the "
                "profile's unset list"
            )


# --- `kai-run env --format maven-settings` -------------------------------------------------


def maven_settings(assign: Mapping[str, str], profile: str) -> str:
    """A `<proxies>` block for ~/.m2/settings.xml from the variables a profile sets.

    One `<proxy>` per scheme with a proxy (`http` for http:// repositories, `https` for https://
    ones: Maven picks a proxy by the repository's protocol), each with the credentials and
    NO_PROXY as `nonProxyHosts`. SOCKS and https:// proxies have no settings.xml form: a comment
    says so.
    """

    def value(*names: str) -> str:
        return next((assign[n] for n in names if assign.get(n)), "")

    proxies = {
        "http": value("http_proxy", "HTTP_PROXY"),
        "https": value("https_proxy", "HTTPS_PROXY"),
    }
    fallback = value("all_proxy", "ALL_PROXY")
    hosts, host_warnings = non_proxy_hosts(value("no_proxy", "NO_PROXY"))
    lines = [
        f"<!-- {_comment(f'kai-run: proxies of profile {profile!r} for the <settings> element of ~/.m2/settings.xml')} -->"
    ]
    blocks: list[str] = []
    notes: list[str] = []
    for protocol, own in proxies.items():
        url = own or fallback
        if not url:
            continue
        parsed, _ = parse_proxy_url(url, protocol)
        shown = redact_url(url)
        if parsed.scheme != "http":
            why = (
                "Maven connects to proxies in plain HTTP only"
                if parsed.scheme == "https"
                else "settings.xml has no SOCKS proxy; use jvm = true (socksProxyHost) instead"
            )
            notes.append(f"{protocol}:// repositories: proxy {shown} left out: {why}")
            continue
        entry = [
            f"    <id>{_xml(f'kai-run-{profile}-{protocol}')}</id>",
            "    <active>true</active>",
            f"    <protocol>{protocol}</protocol>",
            f"    <host>{_xml(parsed.host)}</host>",
            f"    <port>{parsed.effective_port}</port>",
        ]
        if parsed.username is not None:
            entry.append(f"    <username>{_xml(unquote(parsed.username))}</username>")
            if parsed.password is not None:
                entry.append(f"    <password>{_xml(unquote(parsed.password))}</password>")
        entry.append(f"    <nonProxyHosts>{_xml(hosts)}</nonProxyHosts>")
        blocks.append("  <proxy>\n" + "\n".join(entry) + "\n  </proxy>")
    if blocks:
        notes = host_warnings + notes
    lines += [f"<!-- {_comment(n)} -->" for n in notes]
    if not blocks:
        lines.append(f"<!-- {_comment(f'profile {profile!r} sets no HTTP proxy for Maven')} -->")
        lines.append("<proxies/>")
    else:
        lines.append("<proxies>\n" + "\n".join(blocks) + "\n</proxies>")
    return "\n".join(lines) + "\n"


def _xml(text: str) -> str:
    from kai_launch.errors import KaiRunError

    if any(ord(c) < 0x20 and c not in "\t\n\r" for c in text):
        # XML 1.0 cannot carry these at all, escaped or not.
        raise KaiRunError(
            "a proxy setting holds a control character that XML cannot carry",
            hint="use --format sh or --format json",
        )
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )


def _comment(text: str) -> str:
    # Nothing is escaped inside a comment, but `--` may not appear in one, nor may it end in `-`.
    _xml(text)  # refuses control characters
    while "--" in text:
        text = text.replace("--", "- -")
    return text.rstrip("-")
