"""Key patterns with named fields: "backbone.{block:res\\d\\.\\d+}.conv2.weight" matches a key and names its
parts; templates fill them back ("backbone/{block}/conv2/kernel", or "res{stage+2}" with index arithmetic).
The rule tables of the converter and the Hugging Face naming table are written in it."""

from __future__ import annotations

import functools
import re

PLACEHOLDER = re.compile(r"\{(\w+):([^{}]+)\}")


@functools.cache
def pattern_regex(pattern: str) -> re.Pattern[str]:
    """The regex of a pattern: `{name:regex}` becomes the named group `name`, the rest matches literally."""
    parts, last = [], 0
    for match in PLACEHOLDER.finditer(pattern):
        parts.append(re.escape(pattern[last:match.start()]))
        parts.append(f"(?P<{match.group(1)}>{match.group(2)})")
        last = match.end()
    parts.append(re.escape(pattern[last:]))
    return re.compile("".join(parts) + r"\Z")


def pattern_fields(pattern: str) -> dict[str, str]:
    """{field name: its regex} of a pattern."""
    return dict(PLACEHOLDER.findall(pattern))


def fill(template: str, fields: dict[str, str]) -> str:
    """Fill `{name}`, `{name+N}` and `{N-name}` from matched fields (the arithmetic for renumbered indices)."""
    def value(expr: str) -> str:
        if m := re.fullmatch(r"(\w+)\+(\d+)", expr):
            return str(int(fields[m.group(1)]) + int(m.group(2)))
        if m := re.fullmatch(r"(\d+)-(\w+)", expr):
            return str(int(m.group(1)) - int(fields[m.group(2)]))
        return fields[expr]

    return re.sub(r"\{([^{}:]+)\}", lambda m: value(m.group(1)), template)
