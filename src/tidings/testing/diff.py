"""Readable failure messages for lists of messages (events, commands, deadlines) and for state.

Every given/when/then helper of the test kit reports a mismatch the same way: a headline, the first
difference in words, both lists as one-liners a user can paste into the expectation, and a
field-by-field diff with the first differing line marked. Comparison puts the expected value on
the left of ``==``, so ``unittest.mock.ANY`` in an expected field matches anything.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Difference",
    "explain_difference",
    "explain_fields",
    "fields_of",
    "first_difference",
    "one_line",
    "same",
    "same_all",
]

MARK = "<- first difference"

# Nested values with fields (a Money inside an event) are flattened to dotted names this deep;
# deeper ones are shown whole, which keeps a pathological object graph from flooding the message.
_MAX_DEPTH = 3


@dataclass(frozen=True, slots=True)
class Difference:
    """Where two lists of messages first differ: the position, the field (None: the whole message), and why."""

    index: int
    field: str | None
    description: str


def fields_of(value: object) -> dict[str, Any] | None:
    """The named fields of a dataclass or msgspec Struct instance in declaration order; None for anything else."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    # Duck-typed rather than imported: this module must not care which serialisation library is used.
    struct_fields = getattr(type(value), "__struct_fields__", None)
    if isinstance(struct_fields, tuple):
        return {name: getattr(value, name) for name in struct_fields}
    return None


def one_line(value: object) -> str:
    """A message as ``Type(field=value, ...)``, close to the expression that builds it."""
    fields = fields_of(value)
    if fields is None:
        return repr(value)
    inner = ", ".join(f"{name}={field!r}" for name, field in fields.items())
    return f"{type(value).__name__}({inner})"


def same(expected: object, actual: object) -> bool:
    """True if both have the same type and equal fields, each compared with the expected value on the left."""
    expected_fields = fields_of(expected)
    if expected_fields is None:
        return bool(expected == actual)
    if type(expected) is not type(actual):
        return False
    actual_fields = fields_of(actual) or {}
    return all(bool(value == actual_fields.get(name)) for name, value in expected_fields.items())


def same_all(expected: Sequence[object], actual: Sequence[object]) -> bool:
    """True if both lists have the same length and :func:`same` holds pairwise."""
    return len(expected) == len(actual) and all(same(e, a) for e, a in zip(expected, actual, strict=True))


def first_difference(
    expected: Sequence[object], actual: Sequence[object], *, noun: str = "event", actual_label: str = "recorded"
) -> Difference | None:
    """The first position and field where ``actual`` departs from ``expected``, or None if they are the same."""
    for index in range(max(len(expected), len(actual))):
        number = f"{noun} #{index + 1}"
        if index >= len(actual):
            return Difference(index, None, f"{number} {_name(expected[index])} was expected but not {actual_label}")
        if index >= len(expected):
            return Difference(index, None, f"{number} {_name(actual[index])} was {actual_label} but not expected")
        want, got = expected[index], actual[index]
        if same(want, got):
            continue
        if type(want) is not type(got):
            return Difference(index, None, f"{number}: expected {_name(want)}, {actual_label} {_name(got)}")
        want_flat, got_flat = _flatten(want), _flatten(got)
        for name, value in want_flat.items():
            if name and not bool(value == got_flat.get(name)):
                return Difference(
                    index,
                    name,
                    f"{number} {_name(want)}, field `{name}`: "
                    f"expected {value!r}, {actual_label} {got_flat.get(name)!r}",
                )
        # Equal field by field but not as a whole (a custom __eq__, or no fields at all).
        return Difference(index, None, f"{number}: expected {one_line(want)}, {actual_label} {one_line(got)}")
    return None


def explain_difference(
    headline: str,
    expected: Sequence[object],
    actual: Sequence[object],
    *,
    noun: str = "event",
    actual_label: str = "recorded",
) -> str:
    """The whole failure message for two lists that differ: headline, first difference, both lists, marked diff."""
    difference = first_difference(expected, actual, noun=noun, actual_label=actual_label)
    lines = [headline]
    if difference is not None:
        lines.append(f"first difference: {difference.description}")
    lines.append("")
    lines += _listing("expected", expected, noun)
    lines += _listing(actual_label, actual, noun)
    lines.append("")
    lines.append(f"field by field (- expected, + {actual_label}):")
    lines += _marked_diff(_rendered(expected, noun), _rendered(actual, noun), difference)
    return "\n".join(lines)


def explain_fields(
    headline: str, expected: Mapping[str, Any], actual: Mapping[str, Any], *, actual_label: str = "found"
) -> str:
    """A failure message for named values (an aggregate's or a saga's state): each mismatch, then everything found."""
    lines = [headline]
    for name, value in expected.items():
        if not bool(value == actual.get(name)):
            lines.append(f"  {name}: expected {value!r}, {actual_label} {actual.get(name)!r}")
    lines.append(f"{actual_label}:")
    lines += [f"  {name}: {value!r}" for name, value in actual.items()]
    return "\n".join(lines)


# -- rendering -------------------------------------------------------------------------------------


def _name(value: object) -> str:
    return type(value).__name__ if fields_of(value) is not None else repr(value)


def _flatten(value: object, prefix: str = "", depth: int = 0) -> dict[str, Any]:
    """Fields by dotted name; the empty name holds the value itself when it has no fields to show."""
    fields = fields_of(value)
    if fields is None or depth >= _MAX_DEPTH:
        return {prefix: value}
    flat: dict[str, Any] = {}
    for name, field in fields.items():
        dotted = f"{prefix}.{name}" if prefix else name
        nested = _flatten(field, dotted, depth + 1)
        # A nested value with no fields of its own (an empty dataclass) still deserves a line.
        flat.update(nested if nested else {dotted: field})
    return flat


def _listing(label: str, values: Sequence[object], noun: str) -> list[str]:
    if not values:
        return [f"{label}: no {noun}s"]
    plural = noun if len(values) == 1 else f"{noun}s"
    return [f"{label} ({len(values)} {plural}):"] + [f"  {i}. {one_line(v)}" for i, v in enumerate(values, 1)]


def _rendered(values: Sequence[object], noun: str) -> list[tuple[tuple[int, str | None], str]]:
    """One line per message header and per (flattened) field, each keyed by (index, field) for marking."""
    lines: list[tuple[tuple[int, str | None], str]] = []
    for index, value in enumerate(values):
        if fields_of(value) is None:
            lines.append(((index, None), f"#{index + 1} {value!r}"))
            continue
        lines.append(((index, None), f"#{index + 1} {type(value).__name__}"))
        for name, field in _flatten(value).items():
            lines.append(((index, name), f"     {name}: {field!r}"))
    return lines


def _marked_diff(
    expected: list[tuple[tuple[int, str | None], str]],
    actual: list[tuple[tuple[int, str | None], str]],
    difference: Difference | None,
) -> list[str]:
    # Built from the opcodes rather than difflib.unified_diff so every line keeps its (index, field)
    # key and the first difference can be marked on both sides; all lines are context, as the
    # lists in a test are short and a hidden line would only make the reader scroll elsewhere.
    target = (difference.index, difference.field) if difference else None
    width = max((len(text) for _, text in expected + actual), default=0) + 4

    def line(sign: str, key: tuple[int, str | None], text: str) -> str:
        if sign != " " and key == target:
            return f"{sign} {text.ljust(width)}{MARK}"
        return f"{sign} {text}"

    out: list[str] = []
    matcher = difflib.SequenceMatcher(a=[t for _, t in expected], b=[t for _, t in actual], autojunk=False)
    for tag, a0, a1, b0, b1 in matcher.get_opcodes():
        if tag == "equal":
            out += [line(" ", key, text) for key, text in expected[a0:a1]]
            continue
        out += [line("-", key, text) for key, text in expected[a0:a1]]
        out += [line("+", key, text) for key, text in actual[b0:b1]]
    return out
