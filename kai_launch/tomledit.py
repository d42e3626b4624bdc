"""Changing a TOML document with tomlkit the way a careful person would (used by edit.py).

- Only the part of the file an edit is about is parsed with tomlkit (`split_window`): tomlkit is
  slow on big files, and the rest of the text is kept as it is, byte for byte.
- A new value is written in the style of the value it replaces (`styled`): quoting, and for
  arrays the layout (single line, one element per line, hanging indent, trailing comma, where the
  closing bracket sits); elements that stay keep their text and comments.
- A table may be written in many places: `[profiles.a]`, `[profiles.a.env]` further down, dotted
  keys `a.env.X = "1"` under `[profiles]`, inline `{ ... }`. `assign` finds every fragment and
  changes the one that holds the key, and writes new keys in the form their neighbours use.

tomlkit keeps each comment with the table *above* it, while a person reads a comment block right
above a header as belonging to the table *below*. Inserting and removing tables therefore looks at
blank lines: comments glued to a header (no blank line between) move with it, comments after a blank
line stay where they are.
"""

from __future__ import annotations

import itertools
import re
from typing import TYPE_CHECKING, Any

from kai_launch.errors import EditError

if TYPE_CHECKING:
    from collections.abc import Callable

    from tomlkit.container import Container
    from tomlkit.items import Table
    from tomlkit.toml_document import TOMLDocument

# --- parsing only the part of the file an edit is about -------------------------------------------

FULL = "\0full"  # the whole file
TOP = "\0top"  # the top-level keys before the first table (default_profile)
APPEND = "\0append"  # nothing: the edit appends text (add, copy)


def parse_doc(text: str, path: str) -> TOMLDocument:
    import tomlkit
    from tomlkit.exceptions import TOMLKitError

    try:
        doc = tomlkit.parse(text)
    except TOMLKitError as e:
        raise EditError(f"tomlkit cannot read this file: {e}", path, "edit it by hand") from None
    if doc.as_string() != text:
        # Never write what tomlkit cannot reproduce: the promise is byte-for-byte.
        raise EditError(
            "this file cannot be edited without changing its layout", path, "edit it by hand"
        )
    return doc


def split_window(text: str, focus: str) -> tuple[str, str, str]:
    """(before, window, after): the window holds every table of profile `focus` and the table
    before the first of them (whose end holds the comments that introduce it)."""
    if focus == FULL:
        return "", text, ""
    if focus == APPEND:
        return text, "", ""
    found = headers(text)
    if found is None:
        return "", text, ""
    top = found[0][0] if found else len(text)
    if focus == TOP:
        return "", text[:top], text[top:]
    mine = [i for i, (_, path) in enumerate(found) if path[:2] == ("profiles", focus)]
    if not mine or any(path == ("profiles",) for _, path in found) or _DOTTED.search(text, 0, top):
        # `[profiles]` with dotted or inline profiles, `profiles.x.y = 1` at the top: read it all
        return "", text, ""
    first, last = mine[0], mine[-1]
    start = found[first - 1][0] if first > 0 else 0
    end = found[last + 1][0] if last + 1 < len(found) else len(text)
    return text[:start], text[start:end], text[end:]


_DOTTED = re.compile(r"""^[ \t]*(?:profiles|"profiles"|'profiles')[ \t]*\.""", re.M)


# What a header scan must step over: strings (a `[` inside them is no header), comments, brackets.
_TOKENS = re.compile(
    r'''"""(?:[^"\\]|\\.|"(?!""))*"{3,5}'''
    r"""|'''(?:[^']|'(?!''))*'{3,5}"""
    r'''|"(?:[^"\\\n]|\\.)*"'''
    r"""|'[^'\n]*'"""
    r"|#[^\n]*"
    r"|[\[\]{}]"
)


def headers(text: str) -> list[tuple[int, tuple[str, ...]]] | None:
    """Where each `[table]` header line starts, and its key path; None when unsure (arrays of
    tables, something unexpected). Strings, comments and multi-line arrays are skipped over."""
    out: list[tuple[int, tuple[str, ...]]] = []
    depth = 0
    skip_to = 0
    for m in _TOKENS.finditer(text):
        at = m.start()
        if at < skip_to:
            continue  # the rest of a header line
        token = m.group()
        first = token[0]
        if first == "[":
            if depth == 0:
                line_start = text.rfind("\n", 0, at) + 1
                if not text[line_start:at].strip():
                    end = text.find("\n", at)
                    end = len(text) if end < 0 else end
                    path = _header_path(text[at:end])
                    if path is None:
                        return None
                    out.append((line_start, path))
                    skip_to = end
                    continue
            depth += 1
        elif first == "{":
            depth += 1
        elif first in "]}":
            depth -= 1
            if depth < 0:
                return None
        elif first in "\"'" and (len(token) < 2 or token[-1] != first):
            return None  # an unterminated string: not a file to guess about
    return out


_HEADER_PART = re.compile(r"""\s*(?:([A-Za-z0-9_-]+)|"((?:[^"\\]|\\.)*)"|'([^']*)')\s*""")


def _header_path(line: str) -> tuple[str, ...] | None:
    import json

    if line.startswith("[["):
        return None
    parts: list[str] = []
    i = 1
    while True:
        m = _HEADER_PART.match(line, i)
        if m is None:
            return None
        bare, basic, literal = m.groups()
        if basic is not None:
            try:
                basic = json.loads(f'"{basic}"')
            except ValueError:
                return None
        parts.append(bare if bare is not None else basic if basic is not None else literal)
        i = m.end()
        if line.startswith(".", i):
            i += 1
            continue
        if not line.startswith("]", i):
            return None
        rest = line[i + 1 :].strip()
        return tuple(parts) if not rest or rest.startswith("#") else None


# --- rendering new values in the style of the old ones ---------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def key_text(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else _basic(name)


def _basic(text: str) -> str:
    import tomlkit

    return tomlkit.string(text).as_string()


def _literal_ok(text: str) -> bool:
    return "'" not in text and not any(ord(c) < 32 or ord(c) == 127 for c in text if c != "\t")


def canonical(value: object) -> str:
    """How kai-run writes a new value: `"x"`, `["a", "b"]`, `{ env = "NAME" }`, true, 15."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        if "\n" in value:
            return multiline_string(value)
        return _basic(value)
    if isinstance(value, list):
        return "[" + ", ".join(canonical(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{key_text(k)} = {canonical(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__}")


def multiline_string(value: str) -> str:
    """A string with newlines as a \"\"\" block (readable), if that round-trips; else escaped."""
    import tomllib

    body = value.replace("\\", "\\\\").replace('"""', '""\\"')
    body = "".join(c if c in "\n\t" or ord(c) >= 32 else f"\\u{ord(c):04x}" for c in body)
    if body.endswith('"'):
        body = body[:-1] + '\\"'
    candidate = f'"""\n{body}"""'
    try:
        if tomllib.loads(f"v = {candidate}")["v"] == value:
            return candidate
    except tomllib.TOMLDecodeError:
        pass
    return _basic(value)


def styled(old: Any, value: object) -> str:
    """The text for `value` replacing the tomlkit item `old`, in old's style where it can be."""
    from tomlkit.items import Array, InlineTable, String, StringType

    if isinstance(value, str) and isinstance(old, String):
        literal = old.type in (StringType.SLL, StringType.MLL)
        if "\n" in value and old.type in (StringType.MLB, StringType.MLL):
            text = f"'''\n{value}'''"
            if old.type is StringType.MLL and "'''" not in value and _parses_to(text, value):
                return text
            return multiline_string(value)
        if literal and _literal_ok(value):
            return f"'{value}'"
        return _basic(value)
    if isinstance(value, list) and isinstance(old, Array):
        return _restyle_array(old, [str(v) for v in value])
    if isinstance(value, dict) and isinstance(old, InlineTable):
        return _restyle_inline(old, value)
    return canonical(value)


class _Unit:
    """One element of an array as written: indent/comment lines before it, the element, and what
    follows it up to the end of its line (comma, comment). slot: its index in the old array, or
    -1 for a new element, which then remembers the old gap it was inserted into."""

    __slots__ = ("after", "gap", "lead", "slot", "text", "value")

    def __init__(
        self, lead: str, text: str, after: str, value: object, slot: int, gap: int = -1
    ) -> None:
        self.lead = lead
        self.text = text
        self.after = after
        self.value = value
        self.slot = slot
        self.gap = gap


def _last_line(s: str) -> str:
    return s.rpartition("\n")[2]


def _comment_lines(s: str) -> str:
    head, nl, _ = s.rpartition("\n")
    return head + nl


def _most_common(items: list[str]) -> str | None:
    if not items:
        return None
    return max(dict.fromkeys(items), key=items.count)


def _restyle_array(old: Any, values: list[str]) -> str:
    """An array of strings edited the way a person would: elements that stay keep their text,
    comments and place; new ones copy the array's layout -- single line, one element per line,
    a hanging indent, rows of several elements -- with its trailing comma convention and the
    closing bracket where it was. So removing what was added gives back the original bytes."""
    import difflib

    from tomlkit.items import Comment, Null, String, StringType, Whitespace

    if not values:
        return "[]"
    tokens: list[tuple[str, bool, int]] = []  # (text, is_value, comma offset or -1)
    olds: list[Any] = []
    for tok in old._iter_items():
        if isinstance(tok, (Whitespace, Comment, Null)):
            text = tok.as_string()
            comma = text.find(",") if isinstance(tok, Whitespace) else -1
            tokens.append((text, False, comma))
        elif isinstance(tok, String):
            tokens.append((tok.as_string(), True, -1))
            olds.append(tok)
        else:
            return canonical(values)  # not an array of strings: nothing to preserve
    if not olds:
        return canonical(values)
    # Split into: opening, then per element (lead, text, after), then closing.
    seps: list[tuple[str, int]] = [("", -1)]
    elements: list[str] = []
    for text, is_value, comma in tokens:
        if is_value:
            elements.append(text)
            seps.append(("", -1))
        else:
            sep, at = seps[-1]
            seps[-1] = (sep + text, len(sep) + comma if comma >= 0 and at < 0 else at)

    def split_after(sep: str, comma: int) -> tuple[str, str]:
        start = comma + 1 if comma >= 0 else 0
        newline = sep.find("\n", start)
        if comma < 0 and newline < 0:
            return "", sep
        cut = newline + 1 if newline >= 0 else comma + 1
        return sep[:cut], sep[cut:]

    first_sep, _ = seps[0]
    newline = first_sep.find("\n")
    opening, lead = (
        (first_sep[: newline + 1], first_sep[newline + 1 :]) if newline >= 0 else ("", first_sep)
    )
    units: list[_Unit] = []
    for i, text in enumerate(elements):
        after, next_lead = split_after(*seps[i + 1])
        units.append(_Unit(lead, text, after, olds[i].value, i))
        lead = next_lead
    closing = lead

    # The old layout: which gaps between elements are line breaks, and the indents in use.
    count = len(units)
    multiline = "\n" in old.as_string()
    breaks = [u.after.endswith("\n") for u in units]  # breaks[i]: a newline after element i
    trailing_comma = "," in units[-1].after.partition("#")[0]
    first_lead = _last_line(units[0].lead)
    line_lead = _most_common([_last_line(u.lead) for u in units[1:] if breaks[u.slot - 1]])
    if line_lead is None:
        line_lead = first_lead if opening else "    "
    inline_lead = _most_common([u.lead for u in units[1:] if not breaks[u.slot - 1]]) or " "
    literal = all(o.type is StringType.SLL for o in olds)

    def element(value: str) -> str:
        return f"'{value}'" if literal and _literal_ok(value) else _basic(value)

    new: list[_Unit] = []
    matcher = difflib.SequenceMatcher(None, [u.value for u in units], values, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            new.extend(units[i1:i2])
            continue
        for j in range(j1, j2):
            if tag == "replace" and i1 + j - j1 < i2:
                base = units[i1 + j - j1]
                new.append(_Unit(base.lead, element(values[j]), base.after, values[j], base.slot))
            else:
                new.append(_Unit("", element(values[j]), "", values[j], -1, gap=i2))

    def gap_breaks(a: _Unit, b: _Unit) -> bool:
        if not multiline:
            return False
        if a.slot >= 0 and b.slot >= 0:
            return any(breaks[a.slot : b.slot])
        # A new element joins a row of several (`"-p", "8080",`) only when inserted inside it;
        # otherwise it gets a line of its own.
        gap = a.gap if a.slot < 0 else b.gap
        return not 0 < gap < count or breaks[gap - 1]

    gaps = [gap_breaks(a, b) for a, b in itertools.pairwise(new)]
    for k, unit in enumerate(new):
        if k < len(gaps) and ("#" in unit.after or _comment_lines(new[k + 1].lead)):
            gaps[k] = True  # a comment ends its line
    for k, unit in enumerate(new):
        if k == 0:
            unit.lead = _comment_lines(unit.lead) + first_lead
        elif gaps[k - 1]:
            was_line_start = unit.slot > 0 and breaks[unit.slot - 1]
            if not was_line_start:
                unit.lead = _comment_lines(unit.lead) + line_lead
        elif not (unit.slot > 0 and not breaks[unit.slot - 1]):
            unit.lead = inline_lead
        last = k == len(new) - 1
        unit.after = _set_after(
            unit.after,
            comma=not last or trailing_comma,
            newline=breaks[-1] if last else gaps[k],
        )
    text = "[" + opening + "".join(u.lead + u.text + u.after for u in new) + closing + "]"
    return text if _parses_to(text, values) else canonical(values)


def _set_after(after: str, *, comma: bool, newline: bool) -> str:
    """What follows an element, with or without its comma and line break; a comment stays."""
    code, hash_, comment = after.partition("#")
    if ("," in code) == comma and after.endswith("\n") == newline:
        return after
    mark = "," if comma else ""
    if hash_:
        return mark + (code.replace(",", "") or "  ") + hash_ + comment
    return mark + ("\n" if newline else "")


def same_value(old: object, new: object) -> bool:
    return type(old) is type(new) and old == new


def _restyle_inline(old: Any, value: dict[str, Any]) -> str:
    """An inline table with one key changed: the other entries keep their text."""
    written = old.as_string()
    spaced = written.startswith("{ ") or written == "{}"
    entries: list[str] = []
    kept: set[str] = set()
    for key, item in old.value.body:
        if key is None or key.key not in value:
            continue
        kept.add(key.key)
        new = value[key.key]
        text = item.as_string() if same_value(item.unwrap(), new) else styled(item, new)
        entries.append((key.as_string() + key.sep + text).strip())
    for name, new in value.items():
        if name not in kept:
            entries.append(f"{key_text(name)} = {canonical(new)}")
    if not entries:
        return "{}"
    inner = ", ".join(entries)
    text = "{ " + inner + " }" if spaced else "{" + inner + "}"
    return text if _parses_to(text, value) else canonical(value)


def _parses_to(text: str, value: object) -> bool:
    import tomllib

    try:
        return bool(tomllib.loads(f"v = {text}")["v"] == value)
    except tomllib.TOMLDecodeError:
        return False


def _parse_item(text: str) -> Any:
    """A tomlkit item for `text` (a TOML value), parsed so that it renders exactly as written."""
    import tomlkit

    return tomlkit.parse(f"v = {text}").item("v")


# --- finding and changing things in a tomlkit document ---------------------------------------------

DELETE: Any = object()


def container_of(part: Any) -> Container:
    from tomlkit.container import Container

    return part if isinstance(part, Container) else part.value


def fragments(node: list[Any], key: str) -> list[tuple[Any, Any, Any]]:
    """Every place `key` is written in the parts of a table, as (part, key, item): a table may be
    written in several (`a.x = 1` and `a.env.X = "1"` under [profiles], a sub-table further down)."""
    from tomlkit.items import Null

    out: list[tuple[Any, Any, Any]] = []
    for part in node:
        for k, v in container_of(part).body:
            if k is not None and k.key == key and not isinstance(v, Null):
                out.append((part, k, v))
    return out


def has_key(parts: list[Any], key: str) -> bool:
    return any(key in container_of(part) for part in parts)


def assign(
    doc: Any,
    node: list[Any],
    keys: list[str],
    value: Any,
    *,
    top: bool = False,
    dotted: list[Any] | None = None,
) -> None:
    """Set (or with DELETE remove) node[keys...] = value, creating tables where needed.

    node: the parts one table is written as; dotted: those of them written as dotted keys. top:
    node is the `profiles` table and keys[0] a profile, which is never removed for being empty.
    """
    from tomlkit.items import InlineTable, Table

    key = keys[0]
    found = fragments(node, key)
    if len(keys) == 1:
        if not found:
            if value is not DELETE:
                _insert_value(_value_part(node, dotted or []), key, canonical(value))
            return
        part, _, old = found[-1]
        if value is DELETE:
            container_of(part).remove(key)
            _drop_bare_header(part)
        else:
            _replace_value(part, key, styled(old, value))
        return
    if not found:
        if value is not DELETE:
            _insert_table(node, keys, value, dotted or [])
        return
    inline = [f for f in found if isinstance(f[2], InlineTable)]
    if inline:
        # `env = { A = "1" }` or a whole profile written inline: rewrite that one value.
        part, _, child = inline[0]
        new = with_value(child.unwrap(), keys[1:], value)
        if not new and not top:
            container_of(part).remove(key)
        else:
            _replace_value(part, key, styled(child, new))
        return
    children = [v for _, _, v in found]
    if not all(isinstance(c, Table) for c in children):
        raise EditError(f"'{key}' is not a table in this file", None, "edit it by hand")
    assign(doc, children, keys[1:], value, dotted=[v for _, k, v in found if k.is_dotted()])
    if value is DELETE:
        _prune(doc, found, key, top=top)


def _prune(doc: Any, found: list[tuple[Any, Any, Any]], name: str, *, top: bool) -> None:
    """Remove the fragments of a table a deletion left empty. A profile itself stays, but one
    written only with dotted keys (`a.env.X = "1"`) cannot stay without any key."""
    empty = [(part, k, v) for part, k, v in found if _is_empty(v)]
    if top:
        dotted = [f for f in empty if f[1].is_dotted()]
        if dotted and len(empty) == len(found) and all(f[1].is_dotted() for f in found):
            raise EditError(
                f"profile '{name}' is written with dotted keys and this is its last key",
                None,
                f"remove the whole profile with `kai-run profiles remove {name}`, "
                "or set another key first",
            )
        empty = dotted
    for part, k, table in empty:
        if k.is_dotted():
            _remove_entry(container_of(part), table)
        else:
            remove_table(doc, table)


def _drop_bare_header(part: Any) -> None:
    """A table left with nothing but sub-tables needs no [header] of its own: drop it, as the
    file had it before a key was set there (`[a.sidecar.env]` alone, then `sidecar.command`)."""
    from tomlkit.items import Null, Table

    if not isinstance(part, Table) or part.is_super_table() or part.trivia.comment:
        return
    items = [(k, v) for k, v in part.value.body if not isinstance(v, Null)]
    if items and all(isinstance(v, Table) and k and not k.is_dotted() for k, v in items):
        part._is_super_table = True


def _remove_entry(container: Container, item: Any) -> None:
    for i, (_, v) in enumerate(container.body):
        if v is item:
            container._remove_at(i)
            return


def with_value(mapping: dict[str, Any], keys: list[str], value: Any) -> dict[str, Any]:
    out = dict(mapping)
    if len(keys) == 1:
        if value is DELETE:
            out.pop(keys[0], None)
        else:
            out[keys[0]] = value
        return out
    inner = out.get(keys[0])
    inner = with_value(inner if isinstance(inner, dict) else {}, keys[1:], value)
    if inner:
        out[keys[0]] = inner
    else:
        out.pop(keys[0], None)
    return out


def _value_part(node: list[Any], dotted: list[Any]) -> Any:
    """The part of a (possibly fragmented) table where a new plain value belongs: its [header]
    table, else after the last line of a table written with dotted keys."""
    from tomlkit.items import InlineTable, Table

    for part in node:
        if isinstance(part, InlineTable):
            raise EditError("cannot add a key to an inline table here", None, "edit it by hand")
        if not isinstance(part, Table) or not part.is_super_table():
            return part
    return dotted[-1] if dotted else node[0]


def _insert_table(node: list[Any], keys: list[str], value: Any, dotted: list[Any]) -> None:
    """A new sub-table keys[0] holding keys[1:] = value, written like the table's other keys: a
    [header] in a table that has one, a dotted key `env.X = "1"` in a table written that way."""
    from tomlkit.items import Table

    for part in node:
        if isinstance(part, Table) and not part.is_super_table():
            _insert_header_table(part, keys[0], keys[1:], value)
            return
    if dotted:
        _insert_dotted(dotted[-1], keys, value)
        return
    part = node[0]
    if not isinstance(part, Table):
        raise EditError(
            "this profile is not written as a [profiles.NAME] table",
            None,
            "rewrite it as a [profiles.NAME] table, or edit it by hand",
        )
    _insert_header_table(part, keys[0], keys[1:], value)


def _insert_dotted(part: Any, keys: list[str], value: Any) -> None:
    import tomlkit

    container = container_of(part)
    start, _ = _kv_region(container)
    sibling = _last_kv(container, start)
    indent, spacing = "", " = "
    if sibling is not None:
        indent, spacing = sibling[1].trivia.indent, _spacing(sibling[0]) or spacing
    text = ".".join(key_text(k) for k in keys) + spacing + canonical(value) + "\n"
    key, table = tomlkit.parse(text).body[0]
    leaf = table
    while leaf.is_table():
        leaf = next(v for _, v in leaf.value.body)
    leaf.trivia.indent = indent
    _insert(container, start, key, table)


def _spacing(key: Any) -> str | None:
    """The spacing around `=` after a key (tomlkit keeps the space before it in the key)."""
    written = key.as_string()
    spacing: str = written[len(written.rstrip()) :] + key.sep
    return spacing if spacing.strip() == "=" else None


def _is_blank(item: Any) -> bool:
    from tomlkit.items import Whitespace

    return isinstance(item, Whitespace) and "\n" in item.as_string()


def _kv_region(container: Container) -> tuple[int, int]:
    """(index after the last key/value, index of the first sub-table or the end of the body)."""
    from tomlkit.items import AoT, Null, Table

    body = container.body
    end = len(body)
    last = -1
    for i, (k, v) in enumerate(body):
        if isinstance(v, (Table, AoT)) and k is not None and not k.is_dotted():
            end = i
            break
        if k is not None and not isinstance(v, Null):
            last = i
    return last + 1, end


def _after_attached(container: Container, start: int, end: int) -> int:
    """Skip comments glued under the last key (a commented-out option) when a blank line ends
    them; comments glued to the next header instead belong to that header."""
    from tomlkit.items import Comment, Null

    body = container.body
    i = start
    while i < end and isinstance(body[i][1], (Comment, Null)):
        i += 1
    if i < end and _is_blank(body[i][1]):
        return i
    return start


def _insert_value(part: Any, key: str, text: str) -> None:
    from tomlkit.container import Container
    from tomlkit.items import SingleKey, Whitespace

    container = container_of(part)
    start, end = _kv_region(container)
    index = _after_attached(container, start, end)
    item = _parse_item(text)
    if isinstance(part, Container) and start == 0:
        # The first top-level key (default_profile): after the file's opening comment block and
        # its blank line, set apart by a blank line from the first table's comments.
        body = container.body
        if index < end and _is_blank(body[index][1]):
            index += 1
        item.trivia.trail = "\n"
        insert_keyless(container, index, Whitespace("\n"))
        _insert(container, index, SingleKey(key), item)
        return
    new_key = SingleKey(key)
    sibling = _last_kv(container, start)
    if sibling is not None:
        sib_key, sib_item = sibling
        item.trivia.indent = sib_item.trivia.indent
        spacing = _spacing(sib_key)
        if spacing is not None:
            new_key.sep = spacing
    item.trivia.trail = "\n"
    _insert(container, index, new_key, item)


def _last_kv(container: Container, before: int) -> tuple[Any, Any] | None:
    """The last key/value before `before`, looking into dotted keys (`env.X = "1"`)."""
    from tomlkit.items import Null, Table

    for k, v in reversed(container.body[:before]):
        if k is None or isinstance(v, Null):
            continue
        if not isinstance(v, Table):
            return k, v
        if k.is_dotted():
            found = _last_kv(v.value, len(v.value.body))
            if found is not None:
                return found
    return None


def _insert(container: Container, index: int, key: Any, item: Any) -> None:
    if index >= len(container.body):
        previous = container.body[-1][1] if container.body else None
        if (
            previous is not None
            and not _is_blank(previous)
            and hasattr(previous, "trivia")
            and "\n" not in previous.trivia.trail
        ):
            previous.trivia.trail += "\n"
        container._raw_append(key, item)
    else:
        container._insert_at(index, key, item)


def _insert_header_table(part: Any, key: str, keys: list[str], value: Any) -> None:
    """Create `[<part>.key]` holding keys=value inside the profile's own block of the file: before
    its first sub-table (and the comments glued to that one's header), or after its keys (before a
    blank line and whatever comments introduce the next profile)."""
    from tomlkit.items import Comment, Null, SingleKey, Whitespace

    container = container_of(part)
    body = container.body
    start, end = _kv_region(container)
    table = _build_table(keys, value)
    if end < len(body):
        index = end
        while index > start and isinstance(body[index - 1][1], (Comment, Null)):
            index -= 1
        previous = body[index - 1][1] if index else None
        table.trivia.indent = "" if previous is not None and _is_blank(previous) else "\n"
        _innermost(table).value._raw_append(None, Whitespace("\n"))
    else:
        index = _after_attached(container, start, end)
        table.trivia.indent = "\n"
    _insert(container, index, SingleKey(key), table)


def _build_table(keys: list[str], value: Any) -> Table:
    """A new table for keys=value: `[a]` + `X = v`, or for two keys a super table `a` holding
    `[a.b]` + `X = v` (sidecar.env.X): the implicit parent needs no header of its own."""
    import tomlkit
    from tomlkit.items import SingleKey

    table = tomlkit.table()
    if len(keys) == 1:
        item = _parse_item(canonical(value))
        item.trivia.trail = "\n"
        table.value._raw_append(SingleKey(keys[0]), item)
        return table
    inner = _build_table(keys[1:], value)
    outer = tomlkit.table(is_super_table=True)
    outer.value._raw_append(SingleKey(keys[0]), inner)
    return outer


def _innermost(table: Table) -> Table:
    from tomlkit.items import Table

    while table.is_super_table():
        inner = next(v for _, v in table.value.body if isinstance(v, Table))
        table = inner
    return table


def _replace_value(part: Any, key: str, text: str) -> None:
    container = container_of(part)
    # tomlkit copies the old item's indent, comment and line ending onto the new one.
    container[key] = _parse_item(text)


def _is_empty(table: Table) -> bool:
    """No keys, no sub-tables, and no comments of its own (comments after a blank line at its end
    introduce whatever follows, so they do not count)."""
    from tomlkit.items import Comment, Null

    seen_blank = False
    for k, v in table.value.body:
        if isinstance(v, Null):
            continue
        if k is not None:
            return False
        if _is_blank(v):
            seen_blank = True
        elif isinstance(v, Comment) and not seen_blank:
            return False
    return True


class _Entry:
    """One thing the document renders, in order: a header line or a leaf (key, comment, blank)."""

    __slots__ = ("container", "header", "index", "item", "owners")

    def __init__(
        self, container: Container, index: int, item: Any, header: bool, owners: tuple[int, ...]
    ) -> None:
        self.container = container
        self.index = index
        self.item = item
        self.header = header
        self.owners = owners  # id() of every table this entry is inside


def _flatten(doc: Any) -> list[_Entry]:
    from tomlkit.container import _emits_header
    from tomlkit.items import Null, Table

    out: list[_Entry] = []

    def walk(container: Container, owners: tuple[int, ...]) -> None:
        for i, (k, v) in enumerate(container.body):
            if isinstance(v, Null):
                continue
            if isinstance(v, Table) and k is not None and not k.is_dotted():
                inner = (*owners, id(v))
                if _emits_header(k, v):
                    out.append(_Entry(container, i, v, True, inner))
                walk(v.value, inner)
            else:
                out.append(_Entry(container, i, v, False, owners))

    walk(container_of(doc), ())
    return out


def remove_table(doc: Any, table: Any) -> None:
    """Remove a table and its sub-tables with the comments glued above its header, keeping the
    comments that introduce what follows it (tomlkit stores those inside the removed table)."""
    from tomlkit.items import Comment, Null, Whitespace

    flat = _flatten(doc)
    mine = [i for i, e in enumerate(flat) if id(table) in e.owners]
    owner = _owner(doc, table)
    if owner is None:
        return
    parent, index = owner
    if not mine:
        parent._remove_at(index)
        return
    first, last = mine[0], mine[-1]
    lead: list[_Entry] = []
    j = first - 1
    while j >= 0 and not flat[j].header and isinstance(flat[j].item, Comment):
        lead.append(flat[j])
        j -= 1
    while j >= 0 and not flat[j].header and isinstance(flat[j].item, Whitespace):
        lead.append(flat[j])
        j -= 1
    run: list[_Entry] = []
    k = last
    while k > first and not flat[k].header and isinstance(flat[k].item, (Comment, Whitespace)):
        run.insert(0, flat[k])
        k -= 1
    blank = next((n for n, e in enumerate(run) if _is_blank(e.item)), None)
    keep = run if blank is None else run[blank:]
    kept_text = "".join(e.item.as_string() for e in keep)
    for e in lead:
        e.container.body[e.index] = (None, Null())
    parent._remove_at(index)
    if not kept_text:
        return
    if lead:
        slot = lead[-1]
        slot.container.body[slot.index] = (None, Whitespace(kept_text))
    elif j >= 0:
        _append_after(flat[j].item, kept_text)
    else:
        insert_keyless(container_of(doc), 0, Whitespace(kept_text))


def _append_after(item: Any, text: str) -> None:
    """Add text right after what `item` renders (a dotted `a.b = 1` renders its last key)."""
    from tomlkit.items import Null, Table

    while isinstance(item, Table) and item.is_super_table():
        item = next(v for _, v in reversed(item.value.body) if not isinstance(v, Null))
    item.trivia.trail += text


def _owner(doc: Any, table: Any) -> tuple[Container, int] | None:
    """The container holding `table` and its index there."""
    from tomlkit.items import Table

    def search(container: Container) -> tuple[Container, int] | None:
        for i, (_, v) in enumerate(container.body):
            if v is table:
                return container, i
            if isinstance(v, Table):
                found = search(v.value)
                if found is not None:
                    return found
        return None

    return search(container_of(doc))


def insert_keyless(container: Container, index: int, item: Any) -> None:
    for key, where in list(container._map.items()):
        if isinstance(where, tuple):
            container._map[key] = tuple(w + 1 if w >= index else w for w in where)
        elif where >= index:
            container._map[key] = where + 1
    container._body.insert(index, (None, item))


def remove_named(doc: Any, profiles: Callable[[], list[Any]], name: str) -> None:
    """Remove every fragment of profile `name`: its tables (with the comments glued above their
    headers), an inline `name = { ... }`, its dotted keys."""
    from tomlkit.items import Table

    done: set[int] = set()
    while True:
        found = fragments(profiles(), name)
        if not found:
            return
        part, key, item = found[0]
        if id(item) in done:
            raise EditError(f"kai-run could not remove profile '{name}'", None, "edit it by hand")
        done.add(id(item))
        if isinstance(item, Table) and not key.is_dotted():
            remove_table(doc, item)
        else:
            _remove_entry(container_of(part), item)


def rename_key(node: list[Any], old: str, new: str, where: str) -> None:
    """Rename table `old` of the table written as `node` (the profiles); sub-table headers follow."""
    from tomlkit.items import SingleKey, Table

    found = fragments(node, old)
    if any(key.is_dotted() for _, key, _ in found):
        raise EditError(
            f"profile '{old}' is written with dotted keys",
            where,
            "rewrite it as a [profiles.NAME] table, or rename it by hand",
        )
    for container in {id(c): c for c in (container_of(part) for part, _, _ in found)}.values():
        old_key = next(k for k in container._map if k.key == old)
        new_key = SingleKey(new)
        new_key.sep = old_key.sep
        at = container._map.pop(old_key)
        value = dict.__getitem__(container, old)
        for i in at if isinstance(at, tuple) else (at,):
            _, item = container.body[i]
            container.body[i] = (new_key, item)
            if isinstance(item, Table):
                item.name = new
                # Sub-table headers are re-derived from the keys: [profiles.new.env]
                item.invalidate_display_name()
        container._map[new_key] = at
        dict.__delitem__(container, old)
        dict.__setitem__(container, new, value)
