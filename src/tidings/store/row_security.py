"""Row-level security on PostgreSQL, an option: a session sees and writes only its tenant's rows.

The application already refuses a command of one tenant on another's aggregate (the check in
``Repository.load``). Row-level security adds a second wall that holds even against a bug in the
application or a hand-written query: with :func:`enable_row_security` applied, the journal,
aggregate state, snapshots and outbox answer a session only the rows whose ``tenant`` column equals
its ``tidings.tenant`` setting (rows of no tenant when the setting is empty), and refuse to write
any other. A store opened with ``open_store(url, tenant="acme")`` sets it on every connection.

PostgreSQL exempts superusers, roles with BYPASSRLS and the tables' owner from the policies: run
the tenant's processes (API, tenant-bound consumers) as an ordinary role, and the platform's own
workers that serve every tenant (relay, migrations) as the owner. See docs/decisions/0018.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from psycopg import sql

if TYPE_CHECKING:
    from tidings.store.postgres import PostgresStore

__all__ = ["TENANT_SETTING", "TENANT_TABLES", "check_tenant", "enable_row_security", "disable_row_security"]

#: The session setting the policies compare each row's tenant with.
TENANT_SETTING = "tidings.tenant"
#: The tables that carry a tenant column and get the policy.
TENANT_TABLES = ("tidings_journal", "tidings_aggregate_state", "tidings_snapshots", "tidings_outbox")
_POLICY = "tidings_tenant"
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_tenant(tenant: str) -> str:
    """``tenant`` if it can name a tenant of a store (it is passed to the server as a setting); ValueError if not."""
    if not isinstance(tenant, str) or not _TENANT.fullmatch(tenant):
        raise ValueError(
            f"a tenant is 1 to 64 letters, digits, '.', '_' or '-' starting with a letter or digit, got {tenant!r}"
        )
    return tenant


async def enable_row_security(store: PostgresStore) -> None:
    """Put the tenant policy on the journal, aggregate state, snapshots and outbox of ``store`` (idempotent)."""
    # nullif: an unset or empty setting means "no tenant", and then only rows of no tenant match.
    condition = sql.SQL("tenant IS NOT DISTINCT FROM nullif(current_setting({}, true), '')").format(
        sql.Literal(TENANT_SETTING)
    )
    statements = []
    for table in TENANT_TABLES:
        name, policy = sql.Identifier(table), sql.Identifier(_POLICY)
        statements += [
            sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(name),
            sql.SQL("DROP POLICY IF EXISTS {} ON {}").format(policy, name),
            sql.SQL("CREATE POLICY {} ON {} USING ({}) WITH CHECK ({})").format(policy, name, condition, condition),
        ]
    await store.execute_in_transaction(statements)


async def disable_row_security(store: PostgresStore) -> None:
    """Remove the tenant policy again (every role with privileges sees every row)."""
    statements = []
    for table in TENANT_TABLES:
        name = sql.Identifier(table)
        statements += [
            sql.SQL("DROP POLICY IF EXISTS {} ON {}").format(sql.Identifier(_POLICY), name),
            sql.SQL("ALTER TABLE {} DISABLE ROW LEVEL SECURITY").format(name),
        ]
    await store.execute_in_transaction(statements)
