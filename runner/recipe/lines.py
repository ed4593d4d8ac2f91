"""Where each key of a TOML file is written: a map from dotted key to line number.

``tomllib`` gives values, not positions. This scanner reads the text once, tracking table
headers, strings and brackets, and records the line of every ``key =`` and ``[table]``. It is
only used for error messages, so it is forgiving: anything it cannot follow is simply absent.
"""

from __future__ import annotations

import re

_BARE = re.compile(r"[A-Za-z0-9_-]+")


def _split_key(text: str) -> list[str] | None:
    """``a."b.c".d`` -> ["a", "b.c", "d"]; None when it is not a key."""
    parts: list[str] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t":
            i += 1
        if i >= n:
            return None
        if text[i] in "\"'":
            quote = text[i]
            end = text.find(quote, i + 1)
            if end < 0:
                return None
            parts.append(text[i + 1 : end])
            i = end + 1
        else:
            m = _BARE.match(text, i)
            if not m:
                return None
            parts.append(m.group())
            i = m.end()
        while i < n and text[i] in " \t":
            i += 1
        if i < n:
            if text[i] != ".":
                return None
            i += 1
    return parts or None


def key_lines(text: str) -> dict[str, int]:
    """Dotted key -> 1-based line where it is defined (tables: the header's line)."""
    lines: dict[str, int] = {}
    table: list[str] = []
    depth = 0  # open [ and { outside strings: inside them, `x = ` is not a top-level key
    in_multiline: str | None = None
    array_tables: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw
        if in_multiline:
            end = line.find(in_multiline)
            if end < 0:
                continue
            line = line[end + 3 :]
            in_multiline = None
            if depth == 0:
                continue
        stripped = line.strip()
        if depth == 0 and stripped.startswith("["):
            is_array = stripped.startswith("[[")
            inner = stripped[2:] if is_array else stripped[1:]
            close = inner.find("]]" if is_array else "]")
            parts = _split_key(inner[:close]) if close >= 0 else None
            if parts:
                name = ".".join(parts)
                if is_array:
                    index = array_tables.get(name, -1) + 1
                    array_tables[name] = index
                    parts = parts + [str(index)]
                table = parts
                lines.setdefault(".".join(table), number)
            continue
        if depth == 0:
            eq = _find_equals(line)
            if eq is not None:
                parts = _split_key(line[:eq])
                if parts:
                    lines.setdefault(".".join(table + parts), number)
        depth, in_multiline = _track(line, depth)
    return lines


def _find_equals(line: str) -> int | None:
    """Index of the first ``=`` outside quotes, or None."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            return None
        elif ch == "=":
            return i
    return None


def _track(line: str, depth: int) -> tuple[int, str | None]:
    """Bracket depth after ``line``, and the multi-line string delimiter left open, if any."""
    i, n = 0, len(line)
    eq = _find_equals(line) if depth == 0 else None
    i = eq + 1 if eq is not None else 0
    while i < n:
        ch = line[i]
        if ch == "#":
            break
        if line.startswith('"""', i) or line.startswith("'''", i):
            delim = line[i : i + 3]
            end = line.find(delim, i + 3)
            if end < 0:
                return depth, delim
            i = end + 3
            continue
        if ch in "\"'":
            end = i + 1
            while end < n and line[end] != ch:
                end += 2 if ch == '"' and line[end] == "\\" else 1
            i = end + 1
            continue
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth = max(0, depth - 1)
        i += 1
    return depth, None


def line_of(lines: dict[str, int], key: str) -> int | None:
    """The line of ``key``, else of its longest defined prefix (``a.b.3`` -> line of ``a.b``)."""
    parts = key.split(".")
    while parts:
        found = lines.get(".".join(parts))
        if found is not None:
            return found
        parts.pop()
    return None
