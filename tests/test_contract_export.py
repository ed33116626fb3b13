"""`tidings contracts export`: JSON Schema 2020-12 per contract version, AsyncAPI 3.0 per application, valid by the official schema."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from typer.testing import CliRunner

from support import unavailable
from tidings.cli import app as cli

ROOT = Path(__file__).resolve().parents[1]
#: The official AsyncAPI schemas, from the package the AsyncAPI initiative publishes them in (pinned).
ASYNCAPI_SPECS = "@asyncapi/specs@6.11.1"


@pytest.fixture(scope="session")
def asyncapi_3_schema(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The official AsyncAPI 3.0.0 JSON Schema, installed from npm into a temporary directory (never committed)."""
    where = tmp_path_factory.mktemp("asyncapi-specs")
    npm = shutil.which("npm")
    problem = None
    if npm is None:
        problem = "npm is not installed"
    else:
        done = subprocess.run(
            [npm, "install", "--no-save", "--no-audit", "--no-fund", "--silent", "--prefix", str(where), ASYNCAPI_SPECS],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if done.returncode != 0:
            problem = f"npm install {ASYNCAPI_SPECS} failed: {done.stderr.strip()[-500:]}"
    if problem:
        unavailable(f"the AsyncAPI 3.0 schema is needed to validate the export: {problem}")
    path = where / "node_modules" / "@asyncapi" / "specs" / "schemas" / "3.0.0-without-$id.json"
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def _export(out: Path) -> None:
    result = CliRunner().invoke(cli, ["contracts", "export", "--app", "examples.licensing.platform:context_parts", "--out", str(out)])
    assert result.exit_code == 0, result.output


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [*([node["$ref"]] if isinstance(node.get("$ref"), str) else []), *(r for v in node.values() for r in _refs(v))]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_every_application_document_is_valid_asyncapi_3(tmp_path: Path, asyncapi_3_schema: dict[str, Any]) -> None:
    # Given the reference platform / when it is exported
    _export(tmp_path)
    documents = {p.name: json.loads(p.read_text()) for p in (tmp_path / "asyncapi").glob("*.json")}
    assert sorted(documents) == ["asset_processing.asyncapi.json", "compliance.asyncapi.json", "licensing.asyncapi.json"]
    validator = jsonschema.Draft7Validator(asyncapi_3_schema)
    for name, document in documents.items():
        # Then each validates against the official AsyncAPI 3.0 schema, and every reference resolves
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]
        assert errors == [], name
        for ref in _refs(document):
            _resolve(document, ref)
    # And the official schema does refuse a broken document (so the check above means something)
    broken = documents["licensing.asyncapi.json"]
    broken["operations"]["send.licensing.LicensePurchaseConfirmed"]["action"] = "publish"  # AsyncAPI 2 wording
    assert not validator.is_valid(broken)


def test_licensing_document_sends_its_contracts_receives_asset_ready_and_documents_keys(tmp_path: Path) -> None:
    _export(tmp_path)
    document = json.loads((tmp_path / "asyncapi" / "licensing.asyncapi.json").read_text())
    operations = {name: (op["action"], [m["$ref"].rsplit("/", 1)[-1] for m in op["messages"]]) for name, op in document["operations"].items()}
    assert operations == {
        "send.licensing.LicensePurchaseConfirmed": ("send", ["licensing.LicensePurchaseConfirmed.v2"]),
        "send.licensing.LicenseUsageReported": ("send", ["licensing.LicenseUsageReported.v1"]),
        "send.licensing.UsageViolationDetected": ("send", ["licensing.UsageViolationDetected.v1"]),
        "receive.asset_processing.AssetReadyForSearch": ("receive", ["asset_processing.AssetReadyForSearch.v1"]),
    }
    channel = document["channels"]["licensing.license-purchase-confirmed"]
    assert channel["x-partition-key"] == "license_id" and "`license_id`" in channel["description"]
    # Both versions travel on the topic; v1 is still there because an upcaster reads it
    assert sorted(channel["messages"]) == ["licensing.LicensePurchaseConfirmed.v1", "licensing.LicensePurchaseConfirmed.v2"]
    message = document["components"]["messages"]["licensing.LicensePurchaseConfirmed.v2"]
    assert message["x-importance"] == "critical"
    headers = document["components"]["schemas"]["Envelope"]["properties"]
    assert {"event_id", "event_type", "schema_version", "occurred_at", "correlation_id", "causation_id", "tenant"} <= set(headers)
    payload = _resolve(document, message["payload"]["$ref"])
    assert payload["required"] == ["license_id", "asset_id", "buyer_id", "price_cents", "currency"]

    compliance = json.loads((tmp_path / "asyncapi" / "compliance.asyncapi.json").read_text())
    assert {op["action"] for op in compliance["operations"].values()} == {"receive"}
    # A receiver reads every version still readable: v1 through the upcaster, and v2
    assert [m["$ref"].rsplit("/", 1)[-1] for m in compliance["operations"]["receive.licensing.LicensePurchaseConfirmed"]["messages"]] == [
        "licensing.LicensePurchaseConfirmed.v1", "licensing.LicensePurchaseConfirmed.v2",
    ]  # fmt: skip


def test_each_version_has_its_own_2020_12_schema_with_id_title_description_and_version(tmp_path: Path) -> None:
    _export(tmp_path)
    v1 = json.loads((tmp_path / "schemas" / "licensing.LicensePurchaseConfirmed.v1.schema.json").read_text())
    v2 = json.loads((tmp_path / "schemas" / "licensing.LicensePurchaseConfirmed.v2.schema.json").read_text())
    assert v1["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert (v1["$id"], v2["$id"]) == ("urn:tidings:contract:licensing.LicensePurchaseConfirmed:v1", "urn:tidings:contract:licensing.LicensePurchaseConfirmed:v2")
    assert (v1["x-tidings-version"], v2["x-tidings-version"]) == (1, 2)
    assert v2["description"].startswith("A buyer bought a license for an asset at a price; v2 adds the price's ``currency``")
    assert "currency" not in v1["properties"] and "currency" in v2["required"]
    # Open content: readers ignore fields they do not know, so no schema forbids them
    assert "additionalProperties" not in v1 and "additionalProperties" not in v2
    jsonschema.Draft202012Validator.check_schema(v2)
    assert jsonschema.Draft202012Validator(v2).is_valid({"license_id": "L", "asset_id": "A", "buyer_id": "B", "price_cents": 5, "currency": "EUR", "extra": 1})
    assert not jsonschema.Draft202012Validator(v2).is_valid({"license_id": "L", "asset_id": "A", "buyer_id": "B", "price_cents": 5})


def test_a_readable_version_without_a_declared_class_is_exported_saying_so() -> None:
    from tidings.contracts import catalog_of, json_schema
    from tidings.messaging import IntegrationEvent, MessageRegistry

    class Parcel(IntegrationEvent, name="shipping.ParcelSent", version=3):
        parcel_id: str

    registry = MessageRegistry([Parcel])
    registry.upcaster(Parcel, 2)(lambda data: data)
    # Given an upcaster from v2 but none from v1: v2 is readable (its shape unknown), v1 is not
    contract = catalog_of(registry).contracts["shipping.ParcelSent"]
    assert contract.versions == {2: None, 3: Parcel}
    schema = json_schema("shipping.ParcelSent", 2, None, upcast_to=3)
    assert schema["x-tidings-shape-declared"] is False and "declare it" in schema["description"]


def test_an_app_spec_that_names_nothing_readable_is_refused_clearly() -> None:
    runner = CliRunner()
    needs_arguments = runner.invoke(cli, ["contracts", "export", "--app", "json:dumps", "--out", "/tmp/nowhere"])
    assert needs_arguments.exit_code == 2 and "is a function that needs arguments" in needs_arguments.output
    not_contracts = runner.invoke(cli, ["contracts", "export", "--app", "json:JSONDecoder", "--out", "/tmp/nowhere"])
    assert not_contracts.exit_code == 2 and "cannot read contracts from" in not_contracts.output
    empty = runner.invoke(cli, ["contracts", "export", "--app", "json:decoder", "--out", "/tmp/nowhere"])
    assert empty.exit_code == 2 and "found no integration events in json:decoder" in empty.output


def test_a_translator_that_publishes_on_another_topic_than_declared_is_named_as_such(tmp_path: Path) -> None:
    from tidings import Application, DomainEvent
    from tidings.contracts import catalog_of
    from tidings.messaging import Envelope, IntegrationEvent
    from tidings.store.sqlite import SqliteStore

    class Shipped(DomainEvent):
        order_id: str

    class OrderShipped(IntegrationEvent, name="shop.OrderShipped", topic="shop.orders", key="order_id"):
        order_id: str

    app = Application(SqliteStore(str(tmp_path / "t.db")), name="shop")

    @app.translator(Shipped, topic="shop.legacy-orders")
    def shipped(event: Shipped, envelope: Envelope) -> OrderShipped:
        return OrderShipped(order_id=event.order_id)

    contract = catalog_of(app).contracts["shop.OrderShipped"]
    assert contract.producers == {
        "shop: translator test_a_translator_that_publishes_on_another_topic_than_declared_is_named_as_such.<locals>.shipped "
        "(on topic shop.legacy-orders, not the declared shop.orders)"
    }
