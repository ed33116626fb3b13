"""Contracts declare their topic, partition-key field, importance and deprecation as class keywords."""

from __future__ import annotations

import logging
from datetime import date
from typing import ClassVar

import pytest

from model import License, OfferLicense, make_app
from tidings import Command, UnitOfWork
from tidings.messaging import IntegrationEvent, new_id
from tidings.messaging.contracts import topic_of, warn_if_deprecated
from tidings.store import Store


class OrderShipped(IntegrationEvent, name="shop.OrderShipped", version=2, topic="shop.events", key="order_id", importance="critical"):
    """An order left the warehouse."""

    order_id: str
    parcel: str


class Plain(IntegrationEvent, name="shop.Plain"):
    """A contract that declares nothing but its name."""

    note: str


class ShipOrder(Command):
    license_id: str
    order_id: str


def test_declared_keywords_are_read_back() -> None:
    assert (OrderShipped.contract_topic, OrderShipped.contract_key, OrderShipped.contract_importance) == ("shop.events", "order_id", "critical")
    assert topic_of(OrderShipped) == OrderShipped.topic == OrderShipped(order_id="o", parcel="p").topic == "shop.events"  # type: ignore[attr-defined]


def test_defaults_are_unchanged_topic_is_the_message_name_and_importance_normal() -> None:
    assert (topic_of(Plain), Plain.contract_key, Plain.contract_importance, Plain.contract_deprecated_after) == ("shop.Plain", None, "normal", None)


def test_a_topic_class_attribute_still_declares_the_topic() -> None:
    class Old(IntegrationEvent, name="shop.Old"):
        topic: ClassVar[str] = "shop.old-events"
        note: str

    assert topic_of(Old) == "shop.old-events"


def test_a_field_called_topic_is_data_not_a_declaration() -> None:
    class Posted(IntegrationEvent, name="forum.Posted"):
        topic: str = "general"

    assert topic_of(Posted) == "forum.Posted"


def test_an_unknown_importance_is_refused_naming_the_choices() -> None:
    with pytest.raises(TypeError, match=r"Urgent.*importance='urgent' is not one of critical, high, normal, low"):

        class Urgent(IntegrationEvent, name="shop.Urgent", importance="urgent"):
            order_id: str


def test_a_key_naming_no_field_is_refused_naming_the_fields() -> None:
    with pytest.raises(TypeError, match=r"key='orderid' names no field of the contract — use one of its fields \(order_id, parcel\)"):

        class Typo(IntegrationEvent, name="shop.Typo", key="orderid"):
            order_id: str
            parcel: str


def test_a_deprecation_date_that_is_not_a_date_is_refused() -> None:
    with pytest.raises(TypeError, match="deprecated_after='soon' must be a date"):

        class Soon(IntegrationEvent, name="shop.Soon", deprecated_after="soon"):
            order_id: str


async def test_publish_takes_the_topic_and_the_declared_key_field_by_default(store: Store) -> None:
    # Given a handler that loads a license but publishes about an order, without key=
    app = make_app(store)

    @app.command_handler(ShipOrder)
    async def ship(command: ShipOrder, uow: UnitOfWork) -> None:
        await uow.get(License, command.license_id)
        uow.publish(OrderShipped(order_id=command.order_id, parcel="P-1"))

    license_id, order_id = new_id(), new_id()
    await app.handle(OfferLicense(license_id=license_id, product="Editor"))
    await app.handle(ShipOrder(license_id=license_id, order_id=order_id))
    # Then the row is on the declared topic, keyed by the declared field, not by the license
    [row] = [row for row in await store.read_outbox() if row.event_type == "shop.OrderShipped"]
    assert (row.topic, row.partition_key) == ("shop.events", order_id)


def test_publishing_a_version_past_its_deprecation_date_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    class Retired(IntegrationEvent, name="shop.Retired", version=1, deprecated_after=date(2026, 1, 31)):
        order_id: str

    with caplog.at_level(logging.WARNING, logger="tidings.contracts"):
        assert warn_if_deprecated(Retired, today=date(2026, 1, 31)) is False  # the last day is still fine
        assert warn_if_deprecated(Retired, today=date(2026, 2, 1)) is True
        assert warn_if_deprecated(Retired, today=date(2026, 2, 2)) is True
    warnings = [r.getMessage() for r in caplog.records if "shop.Retired" in r.getMessage()]
    assert warnings == ["publishing shop.Retired v1, deprecated after 2026-01-31: move its producers to the newest version, then stop publishing this one"]
