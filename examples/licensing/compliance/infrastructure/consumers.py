"""Compliance's consumers: Licensing's events (ACL 1) and the legacy partner feed (ACL 2).

``compliance.licensing-events`` reads ``UsageViolationDetected`` and ``LicensePurchaseConfirmed``.
A violation opens (or adds to) the license's investigation through ``OpenInvestigation``, run in
the consumer's transaction with the correlation kept and the event as its cause; both events teach
Compliance the license's asset and buyer, which the partner feed checks reports against.

``compliance.partner-feed`` reads the raw partner records the gateway put on
``compliance.partner_feed`` and applies each valid report once (the inbox, and the report table's
key on (partner, report_id)): the record is read and translated by the application's ACL
(:mod:`examples.licensing.compliance.application.partner_feed`), checked against the licenses
Compliance knows, recorded, and — when over the allowance — turned into ``OpenInvestigation``.
A record that cannot be understood (not JSON, not an object, a field missing or malformed, an
unknown license, a client who is not the buyer) is dead-lettered at once with the reason naming
the field; the worker carries on. Dead records do not park later records of their license: each
report stands on its own, and an operator may replay a dead one (say, once its license is known).
"""

from __future__ import annotations

import asyncio
from typing import Any

from examples.licensing.compliance.application import (
    PARTNER_FEED_TOPIC,
    PARTNER_REPORT_TYPE,
    investigation_for_violation,
    partner_of_source,
    read_partner_report,
)
from examples.licensing.compliance.infrastructure.tables import (
    ensure_tables,
    find_known_license,
    record_partner_report,
    remember_license,
)
from examples.licensing.contracts import (
    LICENSE_PURCHASE_CONFIRMED_TOPIC,
    UPCASTERS,
    USAGE_VIOLATION_DETECTED_TOPIC,
    LicensePurchaseConfirmed,
    UsageViolationDetected,
)
from examples.licensing.kernel import Settings
from tidings.app import Application
from tidings.messaging import Envelope, IntegrationEvent, MalformedMessage, MessageContext, MessageRegistry
from tidings.runtime import Consumer, HandlerContext, Retries
from tidings.runtime.backoff import Backoff
from tidings.store import Store

__all__ = [
    "LICENSING_EVENTS_CONSUMER",
    "PARTNER_FEED_CONSUMER",
    "ComplianceConsumer",
    "licensing_events_consumer",
    "partner_feed_consumer",
]

LICENSING_EVENTS_CONSUMER = "compliance.licensing-events"
PARTNER_FEED_CONSUMER = "compliance.partner-feed"

#: A command that lost a race on its investigation is re-run this often (reloading it) before the
#: consumer's own retries take over.
_COMMAND_RETRIES = 3


class ComplianceConsumer(Consumer):
    """A Consumer that creates Compliance's tables before it starts consuming."""

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Create the tables if missing, then consume until ``stop`` is set."""
        self._check_ready()
        await ensure_tables(self.store)
        await super().run(stop)


def _retries(settings: Settings) -> Retries:
    return Retries(
        immediate=settings.immediate_retries,
        delayed=settings.delayed_retries,
        backoff=Backoff(settings.retry_base, max(settings.retry_base, 30.0)),
    )


def _registry_of(*contracts: type[IntegrationEvent]) -> MessageRegistry:
    # Only the contracts handled, with the upcasters of their old versions (a v1 purchase is read
    # as v2): a stray type on these topics is then dead-lettered as unknown, not acked unread.
    registry = MessageRegistry()
    registry.register(*contracts)
    names = {contract.message_name for contract in contracts}
    for (name, from_version), upcaster in UPCASTERS.items():
        if name in names:
            registry.upcaster(name, from_version)(upcaster)
    return registry


def licensing_events_consumer(app: Application, settings: Settings, store: Store | None = None) -> ComplianceConsumer:
    """The consumer of Licensing's violations and purchases (ACL 1), applying them to ``app``."""
    consumer = ComplianceConsumer(
        LICENSING_EVENTS_CONSUMER,
        store,
        topics=[USAGE_VIOLATION_DETECTED_TOPIC, LICENSE_PURCHASE_CONFIRMED_TOPIC],
        registry=_registry_of(UsageViolationDetected, LicensePurchaseConfirmed),
        retries=_retries(settings),
        shards=settings.shards,
    )

    @consumer.handler(UsageViolationDetected)
    async def violation_detected(event: UsageViolationDetected, ctx: HandlerContext) -> None:
        await remember_license(ctx.tx, event.license_id, event.asset_id, event.buyer_id)
        await ctx.handle(app, investigation_for_violation(event), retries=_COMMAND_RETRIES)

    @consumer.handler(LicensePurchaseConfirmed)
    async def purchase_confirmed(event: LicensePurchaseConfirmed, ctx: HandlerContext) -> None:
        await remember_license(ctx.tx, event.license_id, event.asset_id, event.buyer_id)

    return consumer


def partner_feed_consumer(app: Application, settings: Settings, store: Store | None = None) -> ComplianceConsumer:
    """The consumer of the legacy partner feed (ACL 2): valid reports applied once, the rest dead-lettered with reasons."""
    consumer = ComplianceConsumer(
        PARTNER_FEED_CONSUMER,
        store,
        topics=[PARTNER_FEED_TOPIC],
        retries=_retries(settings),
        # A dead record must not hold back the valid reports of its license (see the module docstring).
        on_dead="skip",
        shards=settings.shards,
    )

    async def apply_partner_record(envelope: Envelope, data: Any, tx: Store) -> None:
        # Routed by name, so ``data`` is the record's JSON as plain data (not JSON at all: the
        # consumer has dead-lettered it already as malformed, with the decoder's reason).
        partner = partner_of_source(envelope.source)
        if partner is None:
            raise MalformedMessage(
                PARTNER_REPORT_TYPE,
                f"the envelope's source must be 'partner:<name>', got {envelope.source!r} — publish records "
                "through submit_partner_batch",
                field="source",
            )
        report = read_partner_report(partner, data)
        known = report.check_against(await find_known_license(tx, report.license_id))
        command = report.command(known)
        outcome = "infringement" if command is not None else "within allowance"
        first = await record_partner_report(
            tx, report, event_id=envelope.event_id, outcome=outcome, received_at=envelope.occurred_at
        )
        if first and command is not None:
            if app.store is not tx:
                raise ValueError(
                    f"application {app.name!r} writes to another Store object than consumer {consumer.name!r}; "
                    "build both on the same store so the command joins the message's transaction"
                )
            context = MessageContext(
                correlation_id=envelope.correlation_id,
                causation_id=envelope.event_id,
                user_id=envelope.user_id,
                tenant=envelope.tenant,
            )
            await app.handle(command, context=context, retries=_COMMAND_RETRIES)

    consumer.route(PARTNER_REPORT_TYPE, apply_partner_record)
    return consumer
