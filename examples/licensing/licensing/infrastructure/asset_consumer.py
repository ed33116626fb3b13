"""The consumer that feeds Asset Processing's searchable assets through Licensing's ACL, in its own inbox transaction."""

from __future__ import annotations

from examples.licensing.contracts import ASSET_READY_FOR_SEARCH_TOPIC, UPCASTERS, AssetReadyForSearch
from examples.licensing.kernel import Settings
from examples.licensing.licensing.application import register_command_for
from tidings.app import Application
from tidings.domain import DomainError
from tidings.messaging import IntegrationEvent, MessageRegistry
from tidings.runtime import Consumer, HandlerContext, Retries
from tidings.runtime.backoff import Backoff

__all__ = ["ASSET_ACL_CONSUMER", "asset_acl_consumer", "retries_from"]

#: The consumer's name: its broker group, its inbox and its dead letters.
ASSET_ACL_CONSUMER = "licensing.asset-acl"


def retries_from(settings: Settings) -> Retries:
    """The platform's retry policy for a consumer of this context."""
    return Retries(
        immediate=settings.immediate_retries,
        delayed=settings.delayed_retries,
        backoff=Backoff(settings.retry_base, max(settings.retry_base, 5.0)),
    )


def _registry_of(*contracts: type[IntegrationEvent]) -> MessageRegistry:
    # Only the contracts this consumer reads (and their upcasters): anything else arriving on its
    # topic is an unknown type and goes to the dead letters with that reason. A registry of every
    # contract would let a stray known type through as "not handled here", acked and gone.
    registry = MessageRegistry()
    registry.register(*contracts)
    names = {contract.message_name for contract in contracts}
    for (name, from_version), upcaster in UPCASTERS.items():
        if name in names:
            registry.upcaster(name, from_version)(upcaster)
    return registry


def asset_acl_consumer(app: Application, settings: Settings = Settings()) -> Consumer:
    """A consumer of AssetReadyForSearch that registers each asset as licensable (broker attached later).

    Dead-lettered at once, with the reason: payloads that do not decode into the contract, other
    message types on the topic, versions this code cannot read, and events the ACL refuses
    (ValidationError naming the field, or a DomainError: neither changes on a retry).
    """
    consumer = Consumer(
        ASSET_ACL_CONSUMER,
        app.store,
        topics=[ASSET_READY_FOR_SEARCH_TOPIC],
        registry=_registry_of(AssetReadyForSearch),
        retries=retries_from(settings),
        not_retryable=(DomainError,),
        shards=settings.shards,
    )

    @consumer.handler(AssetReadyForSearch)
    async def register_searchable_asset(event: AssetReadyForSearch, ctx: HandlerContext) -> None:
        # A race with another delivery of the same asset (two writers at version 0) is settled by
        # one retry: the second run finds the asset registered and records nothing.
        await ctx.handle(app, register_command_for(event), retries=1)

    return consumer
