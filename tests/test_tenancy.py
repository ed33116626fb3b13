"""Tenant isolation: a command or query of one tenant cannot load or change another tenant's aggregate.

The check lives in one place, where the repository loads an aggregate (docs/decisions/0018), so it
holds for both persistence styles, with snapshots, and on both stores. On PostgreSQL, row-level
security (an option) adds a wall in the database itself, tested here with a real non-superuser
role, since superusers bypass it. That a consumer bound to a tenant dead-letters others' messages
is tested in tests/test_consumer.py (``wrong tenant``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
from model import (
    Counter,
    Increment,
    License,
    OfferLicense,
    PurchaseLicense,
    ReportUsage,
    SnapshottedCounter,
    make_app,
)
from psycopg import sql
from support import POSTGRES_URL, require_service

from tidings import AggregateNotFound, MessageContext, WrongTenant
from tidings.store import Store, open_store
from tidings.store.postgres import PostgresStore
from tidings.store.row_security import enable_row_security

ACME = MessageContext(tenant="acme")
GLOBEX = MessageContext(tenant="globex")


async def test_a_command_of_one_tenant_cannot_change_another_tenants_state_stored_aggregate(store: Store) -> None:
    # Given a license offered by acme
    app = make_app(store)
    await app.handle(OfferLicense(license_id="L-1", product="Editor"), context=ACME)
    # When globex tries to buy it, or to report usage on it
    for command in (PurchaseLicense(license_id="L-1", buyer="mallory"), ReportUsage(license_id="L-1", units=1)):
        with pytest.raises(WrongTenant, match="License L-1 is not an aggregate of tenant 'globex'"):
            await app.handle(command, context=GLOBEX)
    # Then nothing changed: acme's license is as acme left it, and acme can still buy it
    assert (await app.load(License, "L-1", tenant="acme")).version == 1
    await app.handle(PurchaseLicense(license_id="L-1", buyer="ada"), context=ACME)
    assert (await app.load(License, "L-1", tenant="acme")).buyer == "ada"


@pytest.mark.parametrize("counter", [Counter, SnapshottedCounter], ids=["events", "snapshots"])
async def test_a_command_of_one_tenant_cannot_change_another_tenants_event_sourced_aggregate(
    store: Store, counter: type[Counter]
) -> None:
    # Given acme's counter, far enough along to have a snapshot when the class takes them
    app = make_app(store, counter=counter)
    await app.handle(Increment(counter_id="C-1", times=4), context=ACME)
    # When globex increments "its" counter of the same id
    with pytest.raises(WrongTenant):
        await app.handle(Increment(counter_id="C-1"), context=GLOBEX)
    # Then acme's counter did not move
    assert (await app.load(counter, "C-1", tenant="acme")).value == 4


async def test_a_query_of_one_tenant_finds_no_aggregate_of_another(store: Store) -> None:
    app = make_app(store)
    await app.handle(OfferLicense(license_id="L-2", product="Editor"), context=ACME)
    # WrongTenant is an AggregateNotFound: an API answers it like an unknown id
    with pytest.raises(AggregateNotFound):
        await app.load(License, "L-2", tenant="globex")
    # An aggregate created without a tenant belongs to none
    await app.handle(OfferLicense(license_id="L-3", product="Editor"))
    with pytest.raises(WrongTenant):
        await app.load(License, "L-3", tenant="acme")
    # Without a tenant the caller is the platform itself, and reads anything
    assert (await app.load(License, "L-2")).id == "L-2"


# -- row-level security on PostgreSQL ------------------------------------------------------------


async def test_a_store_bound_to_a_tenant_is_a_postgresql_option_and_sqlite_says_so(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="row-level security; SQLite has none"):
        await open_store(f"sqlite:///{tmp_path / 'one.db'}", tenant="acme")


async def test_a_tenant_that_could_break_the_connection_options_is_refused() -> None:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    with pytest.raises(ValueError, match="a tenant is 1 to 64 letters"):
        await open_store(POSTGRES_URL, tenant="acme -c search_path=elsewhere")


@pytest.fixture
async def rls_schema() -> AsyncIterator[tuple[PostgresStore, str, str]]:
    """A migrated schema with row security on, owned by the superuser, and an ordinary role allowed to use it."""
    require_service("PostgreSQL", "127.0.0.1", 5432)
    schema, role = f"t_{uuid.uuid4().hex[:12]}", f"tidings_tenant_{uuid.uuid4().hex[:8]}"
    owner = await open_store(POSTGRES_URL, schema=schema, migrate=True)
    assert isinstance(owner, PostgresStore)
    await enable_row_security(owner)
    grants = [
        sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS").format(sql.Identifier(role)),
        sql.SQL("GRANT CREATE ON DATABASE test TO {}").format(sql.Identifier(role)),
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), sql.Identifier(role)),
        sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {} TO {}").format(
            sql.Identifier(schema), sql.Identifier(role)
        ),
    ]
    await owner.execute_in_transaction(grants)
    try:
        yield owner, schema, role
    finally:
        await owner.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await owner.execute_in_transaction(
            [
                sql.SQL("REVOKE CREATE ON DATABASE test FROM {}").format(sql.Identifier(role)),
                sql.SQL("DROP ROLE {}").format(sql.Identifier(role)),
            ]
        )
        await owner.close()


async def test_row_security_shows_and_lets_change_only_the_sessions_tenant(
    rls_schema: tuple[PostgresStore, str, str],
) -> None:
    owner, schema, role = rls_schema
    # Given licenses of acme and globex, written by the owner (who is exempt from the policies)
    platform = make_app(owner)
    await platform.handle(OfferLicense(license_id="L-acme", product="Editor"), context=ACME)
    await platform.handle(OfferLicense(license_id="L-globex", product="Editor"), context=GLOBEX)
    await platform.handle(PurchaseLicense(license_id="L-globex", buyer="gus"), context=GLOBEX)

    # When acme's processes connect as an ordinary role with their tenant set
    url = POSTGRES_URL.replace("postgres@", f"{role}@", 1)
    acme_store = await open_store(url, schema=schema, tenant="acme")
    try:
        assert await _whoami(acme_store) == (role, False)  # not a superuser: the policies apply
        acme = make_app(acme_store)
        # Then even the platform's own unchecked load (no tenant in the context) cannot see globex's license
        with pytest.raises(AggregateNotFound):
            await acme.load(License, "L-globex")
        assert (await acme.load(License, "L-acme")).product == "Editor"
        # And a hand-written query sees only acme's rows, in every table with a tenant
        for table in ("tidings_journal", "tidings_aggregate_state", "tidings_outbox"):
            [(tenants,)] = await acme_store.fetch(f"SELECT array_agg(DISTINCT tenant) FROM {table}")
            assert tenants in (["acme"], None), (table, tenants)
        # And it cannot change globex's rows, nor write a row for globex
        assert await acme_store.run("UPDATE tidings_aggregate_state SET version = 99 WHERE aggregate_id = 'L-globex'") == 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            await acme.handle(OfferLicense(license_id="L-new", product="Editor"), context=GLOBEX)
        # While acme's own commands work as before
        await acme.handle(PurchaseLicense(license_id="L-acme", buyer="ada"), context=ACME)
    finally:
        await acme_store.close()
    assert (await platform.load(License, "L-globex")).version == 2
    assert (await platform.load(License, "L-acme")).buyer == "ada"


async def test_without_a_tenant_setting_row_security_shows_only_rows_of_no_tenant(
    rls_schema: tuple[PostgresStore, str, str],
) -> None:
    owner, schema, role = rls_schema
    platform = make_app(owner)
    await platform.handle(OfferLicense(license_id="L-acme", product="Editor"), context=ACME)
    await platform.handle(OfferLicense(license_id="L-none", product="Editor"))
    anyone = await open_store(POSTGRES_URL.replace("postgres@", f"{role}@", 1), schema=schema)
    try:
        rows = await anyone.fetch("SELECT aggregate_id FROM tidings_aggregate_state ORDER BY aggregate_id")
        assert rows == [("L-none",)]
    finally:
        await anyone.close()


async def _whoami(store: Store) -> tuple[str, bool]:
    [(user, superuser)] = await store.fetch("SELECT current_user, (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)")
    return str(user), bool(superuser)
