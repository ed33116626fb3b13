"""JSON Schema (2020-12) of each contract version, and the AsyncAPI 3.0 document of an application.

Schemas are open: they never say ``additionalProperties: false``, because every tidings reader
ignores fields it does not know (see decision 0022). A version whose old shape is not declared as
a class is exported as an object schema that says so, rather than left out.
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any

import msgspec

from tidings.contracts.catalog import Catalog, Contract
from tidings.messaging.contracts import IntegrationEvent
from tidings.messaging.envelope import Envelope

__all__ = ["SCHEMA_DIALECT", "asyncapi_document", "example_payload", "envelope_schema", "json_schema", "schema_id", "write_export"]

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def schema_id(name: str, version: int) -> str:
    """The ``$id`` of a contract version's schema: a stable URN, independent of where the file is hosted."""
    return f"urn:tidings:contract:{name}:v{version}"


def _describe(contract: type[Any]) -> str:
    return inspect.cleandoc(contract.__doc__ or "").strip()


def json_schema(name: str, version: int, contract: type[IntegrationEvent] | None, *, upcast_to: int | None = None) -> dict[str, Any]:
    """The JSON Schema 2020-12 document of ``name`` v``version`` (``contract`` None: the shape is not declared)."""
    head: dict[str, Any] = {"$schema": SCHEMA_DIALECT, "$id": schema_id(name, version), "title": f"{name} v{version}"}
    if contract is None:
        return {
            **head,
            "description": f"Version {version} of {name} is still read (upcast to v{upcast_to}), but its shape is not "
            "declared as a class; declare it (class …V{version}(IntegrationEvent, name=…, version={version})) to export it.",
            "type": "object",
            "x-tidings-version": version,
            "x-tidings-shape-declared": False,
        }
    generated = msgspec.json.schema(contract)
    definitions: dict[str, Any] = generated.get("$defs", {})
    root_name = generated["$ref"].rsplit("/", 1)[-1]
    root = dict(definitions.pop(root_name))
    root.pop("title", None)
    generated_description = root.pop("description", "")
    document = {**head, "description": _describe(contract) or generated_description, **root}
    document.pop("$ref", None)
    document["x-tidings-version"] = version
    if definitions:
        document["$defs"] = definitions
    return _self_references(document, root_name)


def _self_references(document: dict[str, Any], root_name: str) -> dict[str, Any]:
    # The root moved from $defs to the top: a nested reference to it (a recursive contract) points at "#".
    text = json.dumps(document).replace(f'"#/$defs/{root_name}"', '"#"')
    return json.loads(text)  # type: ignore[no-any-return]


def envelope_schema() -> dict[str, Any]:
    """The envelope as a JSON Schema object: the headers every message travels with."""
    generated = msgspec.json.schema(Envelope)
    schema = dict(generated["$defs"]["Envelope"])
    schema["description"] = (
        "The envelope: event id, type (the contract name), schema_version, occurred_at, correlation and causation ids, "
        "tenant, user, source, and the aggregate the message is about; broker headers, or columns of the outbox."
    )
    return schema


def _message_id(name: str, version: int) -> str:
    return f"{name}.v{version}"


def _channel_id(topic: str) -> str:
    return re.sub(r"[^\w.\-]", "_", topic)


def asyncapi_document(catalog: Catalog, application: str, *, version: str = "1.0.0") -> dict[str, Any]:
    """The AsyncAPI 3.0 document of one application: its topics, what it sends and receives, and every message version."""
    usage = catalog.applications.get(application)
    if usage is None:
        known = ", ".join(catalog.applications) or "(none)"
        raise ValueError(f"no application named {application!r} in the catalog; known: {known}")
    used = sorted(set(usage.sends) | set(usage.receives))
    channels: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {"Envelope": envelope_schema()}
    operations: dict[str, Any] = {}
    for name in used:
        contract = catalog.contracts[name]
        channel = _channel_id(contract.topic)
        key = (
            f"Partition key: the value of field `{contract.key}`; messages with one key arrive in publication order."
            if contract.key
            else "Partition key: the id of the aggregate the message is about (the publisher's default)."
        )
        entry = channels.setdefault(
            channel, {"address": contract.topic, "description": key, "messages": {}, "x-partition-key": contract.key}
        )
        for number, cls in contract.versions.items():
            message_id = _message_id(name, number)
            schema_name = message_id.replace(".", "_")
            _payload_schema(contract, number, cls, schemas, schema_name)
            messages[message_id] = {
                "name": name,
                "title": f"{name} v{number}",
                "summary": _describe(cls).split("\n", 1)[0] if cls else f"{name} v{number} (shape not declared)",
                "contentType": "application/json",
                "headers": {"$ref": "#/components/schemas/Envelope"},
                "payload": {"$ref": f"#/components/schemas/{schema_name}"},
                "x-importance": contract.importance,
                "x-schema-version": number,
                **({"x-deprecated-after": cls.contract_deprecated_after.isoformat()} if cls and cls.contract_deprecated_after else {}),
            }
            entry["messages"][message_id] = {"$ref": f"#/components/messages/{message_id}"}
    for action, table in (("send", usage.sends), ("receive", usage.receives)):
        for name in sorted(table):
            contract = catalog.contracts[name]
            channel = _channel_id(contract.topic)
            # One sends only the current version; one receives every readable version (old ones upcast).
            numbers = [contract.current.message_version] if action == "send" else list(contract.versions)
            operations[f"{action}.{name}"] = {
                "action": action,
                "channel": {"$ref": f"#/channels/{channel}"},
                "summary": "; ".join(sorted(table[name])),
                "messages": [{"$ref": f"#/channels/{channel}/messages/{_message_id(name, n)}"} for n in numbers],
            }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": f"{application} contracts",
            "version": version,
            "description": f"Integration events {application} sends and receives, as its code declares them (tidings export).",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def _payload_schema(contract: Contract, version: int, cls: type[IntegrationEvent] | None, schemas: dict[str, Any], schema_name: str) -> None:
    # AsyncAPI 3.0 schemas are JSON Schema draft-07 with references into the document: nested
    # structs go to components/schemas under their own names, the root under the message's name.
    if cls is None:
        schema = json_schema(contract.name, version, None, upcast_to=contract.current.message_version)
        schema.pop("$schema")
        schema.pop("$id")
        schemas[schema_name] = schema
        return
    template = "#/components/schemas/{name}"
    (root_ref,), components = msgspec.json.schema_components([cls], ref_template=template)
    root_name = root_ref["$ref"].rsplit("/", 1)[-1]
    renamed = json.loads(json.dumps(components).replace(f'"#/components/schemas/{root_name}"', f'"#/components/schemas/{schema_name}"'))
    for name, component in renamed.items():
        if name == root_name:
            schemas[schema_name] = {**component, "description": _describe(cls) or component.get("description", ""), "x-tidings-version": version}
        elif schemas.setdefault(name, component) != component:
            raise ValueError(
                f"two contracts nest different types both named {name!r} ({contract.name} v{version} and another); "
                "rename one of the nested classes so the exported schemas do not collide"
            )


def example_payload(schema: dict[str, Any]) -> Any:
    """A payload that fits ``schema``: defaults where declared, else a plain value of each field's type."""
    definitions = schema.get("$defs", {})

    def resolve(node: Any) -> Any:
        for _ in range(50):
            if not (isinstance(node, dict) and "$ref" in node):
                break
            ref = node["$ref"]
            node = schema if ref == "#" else definitions.get(ref.rsplit("/", 1)[-1], {})
        return node

    def build(node: Any, depth: int) -> Any:
        node = resolve(node)
        if depth > 8 or not isinstance(node, dict):
            return None
        if "default" in node:
            return node["default"]
        if "enum" in node:
            return node["enum"][0]
        if "const" in node:
            return node["const"]
        if "anyOf" in node:
            members = [m for m in node["anyOf"] if resolve(m).get("type") != "null"] or node["anyOf"]
            return build(members[0], depth + 1)
        kind = node.get("type")
        if kind == "object":
            if "properties" not in node and isinstance(node.get("additionalProperties"), dict):
                return {"key": build(node["additionalProperties"], depth + 1)}
            return {name: build(field, depth + 1) for name, field in node.get("properties", {}).items()}
        if kind == "array":
            if "prefixItems" in node:
                return [build(item, depth + 1) for item in node["prefixItems"]]
            return [build(node.get("items", {}), depth + 1)]
        formats = {"date-time": "2026-01-31T12:00:00Z", "date": "2026-01-31", "uuid": "7f3e2b1c-0000-4000-8000-000000000000", "decimal": "9.99"}
        return {
            "string": formats.get(node.get("format", ""), "text"),
            "integer": node.get("minimum", 1),
            "number": 1.5,
            "boolean": True,
            "null": None,
        }.get(kind if isinstance(kind, str) else "", None)

    return build(schema, 0)


def write_export(catalog: Catalog, out: Path) -> list[Path]:
    """Write every contract version's JSON Schema and one AsyncAPI document per application under ``out``; the files."""
    written: list[Path] = []
    schemas = out / "schemas"
    schemas.mkdir(parents=True, exist_ok=True)
    for contract in catalog.sorted():
        for number, cls in contract.versions.items():
            path = schemas / f"{contract.name}.v{number}.schema.json"
            document = json_schema(contract.name, number, cls, upcast_to=contract.current.message_version)
            path.write_text(json.dumps(document, indent=2) + "\n")
            written.append(path)
    asyncapi = out / "asyncapi"
    asyncapi.mkdir(parents=True, exist_ok=True)
    for application in catalog.applications:
        path = asyncapi / f"{application}.asyncapi.json"
        path.write_text(json.dumps(asyncapi_document(catalog, application), indent=2) + "\n")
        written.append(path)
    return written
