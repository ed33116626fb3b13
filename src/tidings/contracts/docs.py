"""The readable contract catalog: one Markdown and one HTML page listing every contract for the teams that use them."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from tidings.contracts.catalog import Catalog, Contract
from tidings.contracts.compat import _accepts, _canonical, _differences
from tidings.contracts.schema import example_payload, json_schema

__all__ = ["example_payload", "version_changes", "write_docs"]


def version_changes(contract: Contract) -> list[str]:
    """What changed from each declared version to the next, one line per field (oldest first)."""
    lines = []
    numbers = sorted(contract.versions)
    for older, newer in zip(numbers, numbers[1:]):
        old_cls, new_cls = contract.versions[older], contract.versions[newer]
        if old_cls is None or new_cls is None:
            lines.append(f"v{older} → v{newer}: v{older}'s shape is not declared (read through its upcaster)")
            continue
        old, new = json_schema(contract.name, older, old_cls), json_schema(contract.name, newer, new_cls)
        found = dict(_differences(_canonical(old), _canonical(new), ""))
        for path, what in _accepts(new, old):
            # The reader's view names the types where the shape diff only sees "changed".
            if found.get(path, "declaration changed") == "declaration changed":
                found[path] = what
        described = "; ".join(f"`{path or '(payload)'}` {what}" for path, what in sorted(found.items())) or "no change of shape"
        lines.append(f"v{older} → v{newer}: {described}")
    return lines


def _rows(contract: Contract) -> list[tuple[str, str]]:
    deprecations = [
        f"v{n} after {cls.contract_deprecated_after.isoformat()}" for n, cls in contract.versions.items() if cls and cls.contract_deprecated_after
    ]
    return [
        ("topic", contract.topic),
        ("partition key", f"field {contract.key}" if contract.key else "the publisher's aggregate id"),
        ("importance", contract.importance),
        ("versions", ", ".join(f"v{n}" + ("" if cls else " (shape not declared)") for n, cls in contract.versions.items())),
        ("current version", f"v{contract.current.message_version}"),
        ("producers", "; ".join(sorted(contract.producers)) or "unknown (not found in translators, publish calls or sagas)"),
        ("consumers", "; ".join(sorted(contract.consumers)) or "none found"),
        ("deprecation", "; ".join(deprecations) or "none"),
    ]


def _example(contract: Contract) -> str:
    schema = json_schema(contract.name, contract.current.message_version, contract.current)
    return json.dumps(example_payload(schema), indent=2, default=str)


def _summary(contract: Contract) -> str:
    return (contract.current.__doc__ or "").strip().split("\n", 1)[0]


def markdown(catalog: Catalog) -> str:
    """The catalog as Markdown."""
    out = ["# Contract catalog", "", "Every integration event, its versions and who uses it (written by `tidings contracts docs`).", ""]
    out += ["| contract | current | topic | key | importance |", "| --- | --- | --- | --- | --- |"]
    for contract in catalog.sorted():
        out.append(f"| [{contract.name}](#{contract.name.replace('.', '').lower()}) | v{contract.current.message_version} | "
                   f"{contract.topic} | {contract.key or '—'} | {contract.importance} |")  # fmt: skip
    for contract in catalog.sorted():
        out += ["", f"## {contract.name}", "", _summary(contract), ""]
        out += [f"- **{label}**: {value}" for label, value in _rows(contract)]
        changes = version_changes(contract)
        if changes:
            out += ["", "What changed:", ""] + [f"- {line}" for line in changes]
        out += ["", f"Example payload (v{contract.current.message_version}):", "", "```json", _example(contract), "```"]
    return "\n".join(out) + "\n"


def page(catalog: Catalog) -> str:
    """The catalog as one self-contained HTML page."""
    e = html.escape
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Contract catalog</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}"
        "pre{background:#f5f5f5;padding:.5rem}.critical{color:#b00;font-weight:bold}</style></head><body>",
        "<h1>Contract catalog</h1><table><tr><th>contract</th><th>current</th><th>topic</th><th>key</th><th>importance</th></tr>",
    ]
    for contract in catalog.sorted():
        parts.append(
            f"<tr><td><a href='#{e(contract.name)}'>{e(contract.name)}</a></td><td>v{contract.current.message_version}</td>"
            f"<td>{e(contract.topic)}</td><td>{e(contract.key or '—')}</td><td class='{e(contract.importance)}'>{e(contract.importance)}</td></tr>"
        )
    parts.append("</table>")
    for contract in catalog.sorted():
        parts.append(f"<section id='{e(contract.name)}'><h2>{e(contract.name)}</h2><p>{e(_summary(contract))}</p><dl>")
        parts += [f"<dt>{e(label)}</dt><dd>{e(value)}</dd>" for label, value in _rows(contract)]
        parts.append("</dl>")
        changes = version_changes(contract)
        if changes:
            parts.append("<h3>What changed</h3><ul>" + "".join(f"<li>{e(line)}</li>" for line in changes) + "</ul>")
        parts.append(f"<h3>Example payload (v{contract.current.message_version})</h3><pre>{e(_example(contract))}</pre></section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_docs(catalog: Catalog, out: Path) -> list[Path]:
    """Write ``contracts.md`` and ``contracts.html`` under ``out``; the two paths."""
    out.mkdir(parents=True, exist_ok=True)
    md, page_path = out / "contracts.md", out / "contracts.html"
    md.write_text(markdown(catalog))
    page_path.write_text(page(catalog))
    return [md, page_path]
