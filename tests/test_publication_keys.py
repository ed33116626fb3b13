"""Which partition key a publication from a command handler gets: its aggregate's, so its order holds."""

from __future__ import annotations

import pytest

from model import License, LicensePurchaseConfirmed, OfferLicense, make_app
from tidings import Command, UnitOfWork, ValidationError
from tidings.messaging import new_id, partition_of
from tidings.store import Store


class ConfirmAgain(Command):
    license_id: str


class ConfirmBoth(Command):
    first: str
    second: str


class ConfirmBothKeyed(Command):
    first: str
    second: str


class Announce(Command):
    license_id: str


async def test_publications_of_successive_commands_on_one_aggregate_share_its_key(store: Store) -> None:
    # Given a command handler that loads one license and publishes about it
    app = make_app(store)

    @app.command_handler(ConfirmAgain)
    async def confirm(command: ConfirmAgain, uow: UnitOfWork) -> None:
        license = await uow.get(License, command.license_id)
        uow.publish(LicensePurchaseConfirmed(license_id=license.id, buyer="ada"))

    license_id = new_id()
    await app.handle(OfferLicense(license_id=license_id, product="Editor"))
    # When two successive commands publish about it
    first = await app.handle(ConfirmAgain(license_id=license_id))
    second = await app.handle(ConfirmAgain(license_id=license_id))
    # Then both rows are keyed by the license, so they land in its partition, in order
    rows = [row for row in await store.read_outbox() if row.event_id in {first.published[0].event_id, second.published[0].event_id}]
    assert [row.partition_key for row in rows] == [license_id, license_id]
    assert {row.partition for row in rows} == {partition_of(license_id, app.partitions)}
    # And their envelopes name the license as the aggregate they are about
    assert {(e.aggregate_type, e.aggregate_id) for e in (first.published[0], second.published[0])} == {("License", license_id)}


async def test_a_new_aggregate_returned_by_the_handler_keys_what_it_published(store: Store) -> None:
    # Given a handler that publishes, then returns the aggregate it created
    app = make_app(store)

    @app.command_handler(Announce)
    def announce(command: Announce, uow: UnitOfWork) -> License:
        uow.publish(LicensePurchaseConfirmed(license_id=command.license_id, buyer="nobody yet"))
        return License.offer(command.license_id, "Editor", 1)

    license_id = new_id()
    # When it is handled / then the publication is keyed by the new aggregate
    await app.handle(Announce(license_id=license_id))
    assert [row.partition_key for row in await store.read_outbox()] == [license_id]


async def test_publishing_from_a_handler_of_two_aggregates_without_a_key_is_refused(store: Store) -> None:
    # Given a handler that touches two licenses and publishes without saying which one the event is about
    app = make_app(store)

    @app.command_handler(ConfirmBoth)
    async def confirm(command: ConfirmBoth, uow: UnitOfWork) -> None:
        await uow.get(License, command.first)
        await uow.get(License, command.second)
        uow.publish(LicensePurchaseConfirmed(license_id=command.first, buyer="ada"))

    first, second = new_id(), new_id()
    for license_id in (first, second):
        await app.handle(OfferLicense(license_id=license_id, product="Editor"))
    outbox_before = await store.count("outbox")
    # When it is handled / then it is refused, naming the event and what to do, and nothing is written
    with pytest.raises(ValidationError, match=r"key=") as raised:
        await app.handle(ConfirmBoth(first=first, second=second))
    assert "licensing.LicensePurchaseConfirmed" in str(raised.value)
    assert "2 aggregates" in str(raised.value)
    assert await store.count("outbox") == outbox_before


async def test_an_explicit_key_wins(store: Store) -> None:
    # Given a handler of two licenses that names the key of its publication
    app = make_app(store)

    @app.command_handler(ConfirmBothKeyed)
    async def confirm(command: ConfirmBothKeyed, uow: UnitOfWork) -> None:
        await uow.get(License, command.first)
        await uow.get(License, command.second)
        uow.publish(LicensePurchaseConfirmed(license_id=command.second, buyer="ada"), key=command.second)

    first, second = new_id(), new_id()
    for license_id in (first, second):
        await app.handle(OfferLicense(license_id=license_id, product="Editor"))
    # When it is handled / then the row carries that key
    await app.handle(ConfirmBothKeyed(first=first, second=second))
    assert [row.partition_key for row in await store.read_outbox()] == [second]
