"""The contract lock and the compatibility check: a verdict per contract, every change explained by field path.

Two questions are asked of each pair of shapes, the way a reader meets a writer:

- *backward*: does the new code read every payload the locked code wrote?
- *forward*: does the locked (still deployed) code read every payload the new code writes?

"Reads" follows what tidings readers do (decision 0022): unknown fields are ignored (open content,
unless a schema is closed), a missing field takes its default, a field's declared type is checked
(an integer is a valid float, not the other way round). Nested types are compared by shape, so a
renamed nested class is no change.

Versions decide which pairs are compared. Within one version number no upcaster runs, so a change
that new code cannot read old payloads with is BREAKING; an old version's shape may not change at
all (its payloads are already out there). A new version is read back from the locked one through
the upcaster chain, so it may add required fields, but consumers still on the old version refuse
newer payloads: it is BACKWARD, consumers deploy first. Dropping an old version is allowed after its
``deprecated_after`` date (FORWARD: what is still stored of it can no longer be read).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date
from enum import Enum
from pathlib import Path
from typing import Any

import msgspec

from tidings.contracts.catalog import Catalog, Contract
from tidings.contracts.schema import example_payload, json_schema

__all__ = ["LOCK_FORMAT", "Change", "ContractReport", "Verdict", "check", "lock", "lock_document", "read_lock"]

LOCK_FORMAT = "tidings.contracts.lock/1"


class Verdict(str, Enum):
    """How a contract's code relates to its lock."""

    #: New code reads what the locked code wrote, and the other way round: deploy in any order.
    FULL = "FULL"
    #: New code reads what the locked code wrote, not the other way round: deploy consumers first.
    BACKWARD = "BACKWARD"
    #: Locked code reads what new code writes, not the other way round (an old version retired after its date).
    FORWARD = "FORWARD"
    #: Readers would fail on messages that exist or will exist: fix before it ships.
    BREAKING = "BREAKING"


@dataclass(frozen=True)
class Change:
    """One difference between the lock and the code, located by version and field path, with its fix."""

    version: int | None
    path: str
    what: str
    backward: bool
    forward: bool
    breaking: bool = False
    fix: str = ""

    def describe(self) -> str:
        """One line: where, what, and the fix when it is breaking."""
        where = f"v{self.version}" if self.version is not None else "contract"
        where += f" {self.path}" if self.path else ""
        text = f"{where}: {self.what}"
        return f"{text} — fix: {self.fix}" if self.fix and self.breaking else text


@dataclass
class ContractReport:
    """The verdict on one contract and the changes behind it."""

    name: str
    verdict: Verdict
    changes: list[Change] = field(default_factory=list)
    note: str = ""


def lock_document(catalog: Catalog) -> dict[str, Any]:
    """The lock: for every contract, where it travels and the JSON Schema of every readable version."""
    contracts: dict[str, Any] = {}
    for contract in catalog.sorted():
        versions = {}
        for number, cls in contract.versions.items():
            versions[str(number)] = {
                "schema": json_schema(contract.name, number, cls, upcast_to=contract.current.message_version) if cls else None,
                "deprecated_after": cls.contract_deprecated_after.isoformat() if cls and cls.contract_deprecated_after else None,
            }
        contracts[contract.name] = {
            "topic": contract.topic,
            "key": contract.key,
            "importance": contract.importance,
            "current": contract.current.message_version,
            "versions": versions,
        }
    return {"format": LOCK_FORMAT, "contracts": contracts}


def lock(catalog: Catalog, path: Path) -> None:
    """Write the lock of ``catalog`` to ``path`` (stable formatting, so its diff in review is readable)."""
    path.write_text(json.dumps(lock_document(catalog), indent=2, sort_keys=True) + "\n")


def read_lock(path: Path) -> dict[str, Any]:
    """The lock at ``path``; ValueError saying what is wrong with it."""
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"no lock file at {path}: write one with `tidings contracts lock --app … --out {path}`") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON ({exc}); restore it from version control or write it again") from None
    if not isinstance(document, dict) or document.get("format") != LOCK_FORMAT:
        raise ValueError(f"{path} is not a tidings contracts lock (format {LOCK_FORMAT!r} expected)")
    return document


def check(catalog: Catalog, locked: dict[str, Any], *, today: date | None = None) -> list[ContractReport]:
    """A report per contract of the lock and of the code, sorted by name."""
    today = today or date.today()
    reports = []
    names = sorted(set(locked["contracts"]) | set(catalog.contracts))
    for name in names:
        entry = locked["contracts"].get(name)
        contract = catalog.contracts.get(name)
        if entry is None:
            reports.append(ContractReport(name, Verdict.FULL, note="new contract, not locked yet: run `tidings contracts lock`"))
        elif contract is None:
            change = Change(
                None, "", "the contract is gone from the code, but it is locked: consumers still read it",
                backward=True, forward=False, breaking=True,
                fix="keep publishing it until every consumer has moved off it (declare deprecated_after=), then remove it from the lock",
            )  # fmt: skip
            reports.append(ContractReport(name, Verdict.BREAKING, [change]))
        else:
            changes = _compare(contract, entry, today)
            reports.append(ContractReport(name, _verdict(changes), changes))
    return reports


def _verdict(changes: list[Change]) -> Verdict:
    if any(change.breaking for change in changes):
        return Verdict.BREAKING
    backward = all(change.backward for change in changes)
    forward = all(change.forward for change in changes)
    if backward and forward:
        return Verdict.FULL
    if backward:
        return Verdict.BACKWARD
    if forward:
        return Verdict.FORWARD
    return Verdict.BREAKING


def _compare(contract: Contract, entry: dict[str, Any], today: date) -> list[Change]:
    changes: list[Change] = []
    if entry["topic"] != contract.topic:
        changes.append(Change(
            None, "", f"topic changed from {entry['topic']!r} to {contract.topic!r}: consumers subscribed to the old one hear nothing",
            backward=False, forward=False, breaking=True, fix=f"keep topic={entry['topic']!r}, or publish to both during a migration",
        ))  # fmt: skip
    if entry["key"] != contract.key:
        changes.append(Change(
            None, "", f"partition key changed from {entry['key']!r} to {contract.key!r}: messages that were ordered per key may now be reordered",
            backward=False, forward=False, breaking=True, fix=f"keep key={entry['key']!r}; order by another field in a new contract",
        ))  # fmt: skip
    if entry["importance"] != contract.importance:
        changes.append(Change(None, "", f"importance changed from {entry['importance']} to {contract.importance}", backward=True, forward=True))
    locked_current = int(entry["current"])
    current = contract.current.message_version
    code_versions = {number: json_schema(contract.name, number, cls) if cls else None for number, cls in contract.versions.items()}
    if current < locked_current:
        changes.append(Change(
            current, "", f"the current version went back from v{locked_current} to v{current}: consumers on v{locked_current} refuse nothing, "
            f"but producers of v{locked_current} payloads are no longer understood", backward=False, forward=False, breaking=True,
            fix=f"restore v{locked_current} as the current class",
        ))  # fmt: skip
        return changes
    for number_text, locked_version in sorted(entry["versions"].items(), key=lambda item: int(item[0])):
        number = int(number_text)
        locked_schema = locked_version["schema"]
        if number not in code_versions:
            changes.append(_retired(number, current, locked_version.get("deprecated_after"), today))
            continue
        code_schema = code_versions[number]
        if locked_schema is None or code_schema is None:
            if locked_schema is not None:
                changes.append(Change(number, "", "its class is no longer declared, so its shape is no longer checked",
                                      backward=True, forward=True))  # fmt: skip
            continue
        backward = _accepts(code_schema, locked_schema)
        forward = _accepts(locked_schema, code_schema)
        if number < locked_current or number < current:
            # An old version describes payloads already published: any change misdescribes them,
            # even one every reader would tolerate (a field added with a default).
            found = sorted(set(backward) | set(forward)) or _differences(_canonical(locked_schema), _canonical(code_schema), "")
            for problem in found:
                changes.append(Change(
                    number, problem[0], f"{problem[1]} — v{number} changed in place, but its payloads are already published",
                    backward=False, forward=False, breaking=True,
                    fix=f"restore v{number} as locked; put the change in a new version with an upcaster",
                ))  # fmt: skip
            continue
        changes.extend(_in_place(number, backward, forward))
    if current > locked_current:
        locked_schema = entry["versions"].get(str(locked_current), {}).get("schema")
        changes.extend(_bumped(contract, locked_current, current, locked_schema))
    return changes


def _in_place(number: int, backward: list[tuple[str, str]], forward: list[tuple[str, str]]) -> list[Change]:
    changes = []
    back, fore = dict(backward), dict(forward)
    for path in sorted(set(back) | set(fore)):
        if path in back:
            # Within one version no upcaster runs: payloads of this version already written must still decode.
            changes.append(Change(
                number, path, f"{back[path]} (the new code cannot read v{number} payloads already written)",
                backward=False, forward=path not in fore, breaking=True, fix=_fix(back[path], number),
            ))  # fmt: skip
        else:
            changes.append(Change(
                number, path, f"{fore[path]} (consumers still on the locked code cannot read what the new code writes: deploy consumers first)",
                backward=True, forward=False,
            ))  # fmt: skip
    return changes


def _fix(problem: str, number: int) -> str:
    if "is required" in problem or "no longer optional" in problem:
        return f"make the field optional with a default, or bump to version {number + 1} and add an upcaster from {number}"
    return f"bump to version {number + 1} and add an upcaster from {number} that converts the old value"


def _bumped(contract: Contract, locked_current: int, current: int, locked_schema: dict[str, Any] | None) -> list[Change]:
    if locked_current not in contract.versions:
        return [Change(
            current, "", f"v{current} replaces v{locked_current}, but v{locked_current} payloads can no longer be read (no upcaster chain)",
            backward=False, forward=False, breaking=True,
            fix=f"register an upcaster from {locked_current} to {locked_current + 1}" + (f" and on to {current}" if current > locked_current + 1 else ""),
        )]  # fmt: skip
    if locked_schema is not None:
        # The chain exists; try it on a payload of the locked shape, as a consumer would meet one.
        data = example_payload(locked_schema)
        try:
            for step in range(locked_current, current):
                data = contract.upcasters[step](dict(data))
            msgspec.convert(data, contract.current)
        except Exception as exc:
            return [Change(
                current, "", f"the upcasters from v{locked_current} fail on a v{locked_current} payload {json.dumps(example_payload(locked_schema))}: {exc}",
                backward=False, forward=False, breaking=True,
                fix=f"make the upcaster chain from {locked_current} produce a valid v{current} payload (test it with an old payload)",
            )]  # fmt: skip
    return [Change(
        current, "", f"new version v{current}, read back from v{locked_current} through upcasters; consumers still on v{locked_current} "
        f"dead-letter v{current} payloads as a newer version: deploy consumers before producers",
        backward=True, forward=False,
    )]  # fmt: skip


def _retired(number: int, current: int, deprecated_after: str | None, today: date) -> Change:
    if deprecated_after and date.fromisoformat(deprecated_after) < today:
        return Change(
            number, "", f"v{number} is no longer read (deprecated after {deprecated_after}); stored v{number} payloads can no longer be replayed",
            backward=False, forward=True,
        )  # fmt: skip
    return Change(
        number, "", f"v{number} is locked as readable, but no upcaster chain reads it any more",
        backward=False, forward=False, breaking=True,
        fix=f"restore the upcaster from {number}; to retire v{number}, declare deprecated_after= on it, lock, and remove it after that date",
    )  # fmt: skip


def _canonical(document: dict[str, Any]) -> Any:
    """The shape of a schema with references inlined and annotations (titles, descriptions, names) dropped."""
    shapes = _Shapes(document)

    def walk(node: Any, depth: int) -> Any:
        if depth > 20:
            return "…"
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(shapes.resolve(node), depth + 1)
            return {
                k: walk(v, depth + 1)
                for k, v in node.items()
                if k not in ("title", "description", "$id", "$schema", "$defs", "examples") and not k.startswith("x-")
            }
        if isinstance(node, list):
            return [walk(v, depth + 1) for v in node]
        return node

    return walk(document, 0)


def _differences(old: Any, new: Any, path: str) -> list[tuple[str, str]]:
    """Where two canonical shapes differ, by field path: fields added or removed, made required or optional, retyped."""
    if not (isinstance(old, dict) and isinstance(new, dict) and "properties" in old and "properties" in new):
        if old == new:
            return []
        if isinstance(old, dict) and isinstance(new, dict) and isinstance(old.get("type"), str) and isinstance(new.get("type"), str) and old["type"] != new["type"]:
            return [(path, f"type changed from {old['type']} to {new['type']}")]
        return [(path, "declaration changed")]
    at = lambda name: f"{path}.{name}" if path else name  # noqa: E731
    old_required, new_required = set(old.get("required", ())), set(new.get("required", ()))
    found = []
    for name in new["properties"]:
        if name not in old["properties"]:
            found.append((at(name), "field added (required)" if name in new_required else "field added (optional, with a default)"))
    for name in old["properties"]:
        if name not in new["properties"]:
            found.append((at(name), "field removed"))
            continue
        if (name in old_required) != (name in new_required):
            found.append((at(name), "made required" if name in new_required else "made optional"))
        found += _differences(old["properties"][name], new["properties"][name], at(name))
    rest_old = {k: v for k, v in old.items() if k not in ("properties", "required")}
    rest_new = {k: v for k, v in new.items() if k not in ("properties", "required")}
    return found + ([] if rest_old == rest_new else [(path, "declaration changed (openness or constraints)")])


# -- reading one shape with another ------------------------------------------------------------

_CONSTRAINTS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minLength", "maxLength", "pattern", "minItems", "maxItems")


class _Shapes:
    """Resolves references of one schema document and answers what kind of value a node accepts."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.definitions = document.get("$defs", {})
        self.root = document

    def resolve(self, node: Any) -> Any:
        seen = 0
        while isinstance(node, dict) and "$ref" in node and seen < 50:
            ref = node["$ref"]
            node = self.root if ref == "#" else self.definitions.get(ref.rsplit("/", 1)[-1], {})
            seen += 1
        return node


def _accepts(reader_doc: dict[str, Any], writer_doc: dict[str, Any]) -> list[tuple[str, str]]:
    """Problems (field path, what) that stop a reader of ``reader_doc`` from reading payloads of ``writer_doc``."""
    problems: list[tuple[str, str]] = []
    _read(_Shapes(reader_doc), reader_doc, _Shapes(writer_doc), writer_doc, "", problems, set())
    return problems


def _members(shapes: _Shapes, node: Any) -> list[Any]:
    node = shapes.resolve(node)
    if isinstance(node, dict) and "anyOf" in node:
        return [m for member in node["anyOf"] for m in _members(shapes, member)]
    if isinstance(node, dict) and isinstance(node.get("type"), list):
        return [{**node, "type": t} for t in node["type"]]
    return [node]


def _kind(node: dict[str, Any]) -> str:
    if "enum" in node:
        return "enum"
    if "const" in node:
        return "enum"
    kind = node.get("type")
    if kind == "object" and "properties" not in node and isinstance(node.get("additionalProperties"), dict):
        return "map"
    return kind if isinstance(kind, str) else "any"


def _values(node: dict[str, Any]) -> list[Any]:
    return list(node["enum"]) if "enum" in node else [node["const"]]


def _label(node: dict[str, Any]) -> str:
    kind = _kind(node)
    if kind == "enum":
        return "one of " + ", ".join(json.dumps(v) for v in _values(node))
    if kind == "string" and node.get("format"):
        return f"string ({node['format']})"
    return {"any": "anything", "map": "map"}.get(kind, kind)


def _read(rs: _Shapes, reader: Any, ws: _Shapes, writer: Any, path: str, problems: list[tuple[str, str]], seen: set[tuple[int, int]]) -> None:
    reader_members, writer_members = _members(rs, reader), _members(ws, writer)
    for written in writer_members:
        marker = (id(written), id(reader))
        if marker in seen:  # a recursive type compared with itself further down
            continue
        attempts: list[list[tuple[str, str]]] = []
        for candidate in reader_members:
            found: list[tuple[str, str]] = []
            _read_one(rs, candidate, ws, written, path, found, seen | {marker})
            if not found:
                break
            attempts.append(found)
        else:
            if len(reader_members) == 1:
                problems.extend(attempts[0])
            elif any(_kind(c) == _kind(written) for c in reader_members):
                # The union has a member of the same kind: its problem is the informative one.
                problems.extend(next(a for c, a in zip(reader_members, attempts) if _kind(c) == _kind(written)))
            else:
                options = " or ".join(_label(c) for c in reader_members)
                problems.append((path, f"{_label(written)} is written, but only {options} is read"))


def _read_one(rs: _Shapes, reader: dict[str, Any], ws: _Shapes, writer: dict[str, Any], path: str, problems: list[tuple[str, str]], seen: set[tuple[int, int]]) -> None:
    rk, wk = _kind(reader), _kind(writer)
    if rk == "any":
        return
    if wk == "enum":
        values = _values(writer)
        if rk == "enum":
            missing = [v for v in values if v not in _values(reader)]
            if missing:
                problems.append((path, f"enum value {', '.join(json.dumps(v) for v in missing)} is written but no longer accepted"))
            return
        if all(_json_type(v) == rk or (rk == "number" and _json_type(v) == "integer") for v in values):
            _constraints(reader, {}, path, problems)
            return
        problems.append((path, f"type changed from {_label(writer)} to {_label(reader)}"))
        return
    if rk == "enum":
        problems.append((path, f"narrowed from any {_label(writer)} to {_label(reader)}"))
        return
    if rk != wk and not (rk == "number" and wk == "integer"):
        if rk == "integer" and wk == "number":
            problems.append((path, "narrowed from number to integer: a written 1.5 is not an integer"))
        elif wk == "null":
            problems.append((path, "null is written (the field is nullable), but the reader does not accept null"))
        else:
            problems.append((path, f"type changed from {_label(writer)} to {_label(reader)}"))
        return
    if rk == "string" and reader.get("format") and reader.get("format") != writer.get("format"):
        problems.append((path, f"narrowed from {_label(writer)} to {_label(reader)}"))
        return
    _constraints(reader, writer, path, problems)
    if rk == "object":
        _read_object(rs, reader, ws, writer, path, problems, seen)
    elif rk == "array":
        _read_array(rs, reader, ws, writer, path, problems, seen)
    elif rk == "map":
        _read(rs, reader["additionalProperties"], ws, writer["additionalProperties"], f"{path}.*" if path else "*", problems, seen)


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "null" if value is None else "object"


def _constraints(reader: dict[str, Any], writer: dict[str, Any], path: str, problems: list[tuple[str, str]]) -> None:
    tighter = [f"{k}={reader[k]!r}" for k in _CONSTRAINTS if k in reader and reader.get(k) != writer.get(k)]
    if tighter:
        problems.append((path, f"constraint {', '.join(tighter)} is not guaranteed by the writer"))


def _read_object(rs: _Shapes, reader: dict[str, Any], ws: _Shapes, writer: dict[str, Any], path: str, problems: list[tuple[str, str]], seen: set[tuple[int, int]]) -> None:
    r_props, w_props = reader.get("properties", {}), writer.get("properties", {})
    r_required, w_required = set(reader.get("required", ())), set(writer.get("required", ()))
    for name, r_field in r_props.items():
        where = f"{path}.{name}" if path else name
        if name not in w_props:
            if name in r_required:
                problems.append((where, "is required, but the writer does not send it"))
            continue
        if name in r_required and name not in w_required:
            problems.append((where, "is no longer optional: payloads without it (the writer may omit it) are refused"))
        elif name not in r_required and name not in w_required:
            r_default, w_default = rs.resolve(r_field).get("default"), ws.resolve(w_props[name]).get("default")
            if r_default != w_default:
                problems.append((where, f"default changed from {json.dumps(w_default)} to {json.dumps(r_default)}: a payload without it means something else"))
        _read(rs, r_field, ws, w_props[name], where, problems, seen)
    if reader.get("additionalProperties") is False:
        for name in w_props:
            if name not in r_props:
                where = f"{path}.{name}" if path else name
                problems.append((where, "is written, but the reader's closed model refuses unknown fields"))


def _read_array(rs: _Shapes, reader: dict[str, Any], ws: _Shapes, writer: dict[str, Any], path: str, problems: list[tuple[str, str]], seen: set[tuple[int, int]]) -> None:
    r_prefix, w_prefix = reader.get("prefixItems"), writer.get("prefixItems")
    if r_prefix is not None or w_prefix is not None:
        if r_prefix is None or w_prefix is None or len(r_prefix) != len(w_prefix):
            problems.append((path, "tuple shape changed (number of items)"))
            return
        for index, (r_item, w_item) in enumerate(zip(r_prefix, w_prefix)):
            _read(rs, r_item, ws, w_item, f"{path}[{index}]", problems, seen)
        return
    _read(rs, reader.get("items", {}), ws, writer.get("items", {}), f"{path}[]", problems, seen)
