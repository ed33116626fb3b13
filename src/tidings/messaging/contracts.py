"""Integration events: the public, versioned contracts other bounded contexts depend on."""

from __future__ import annotations

import dataclasses
import logging
import weakref
from datetime import date, datetime
from typing import Any, ClassVar

from tidings.domain.messages import Message

__all__ = ["IMPORTANCES", "IntegrationEvent", "declared_versions", "partition_key_of", "topic_of", "warn_if_deprecated"]

log = logging.getLogger("tidings.contracts")

#: How much the business cares when a message of a contract cannot be delivered, most important first.
IMPORTANCES: tuple[str, ...] = ("critical", "high", "normal", "low")

# Every declared contract class by (name, version), old versions included: the registry knows one
# class per name (the current one), but export and the compatibility check need the shape of every
# version a reader may still meet. Weak, so classes of a discarded module (a test's) disappear; a
# set, because two modules may declare the same name and version (a test's model, say).
_declared: dict[tuple[str, int], weakref.WeakSet[type[IntegrationEvent]]] = {}
_warned: set[tuple[str, int]] = set()


class IntegrationEvent(Message):
    """A flat, serialisable, versioned fact published to other contexts.

    Give it a stable dotted name and bump ``version`` on any change a consumer would notice; the
    other class keywords say where and how it travels::

        class LicensePurchaseConfirmed(
            IntegrationEvent, name="licensing.LicensePurchaseConfirmed", version=2,
            topic="licensing.license-purchase-confirmed", key="license_id", importance="critical",
        ):
            license_id: str
            buyer_id: str
            price_cents: int
            currency: str = "EUR"

    ``topic`` defaults to the message name; ``key`` names the field whose value is the partition
    key when the publisher passes none; ``importance`` (critical, high, normal, low; default
    normal) travels to dead letters; ``deprecated_after`` is the date after which publishing this
    version logs a warning (once per process).
    """

    #: The broker topic of every version of this contract (None: the message name).
    contract_topic: ClassVar[str | None] = None
    #: The field whose value partitions this contract's messages when the publisher gives no key.
    contract_key: ClassVar[str | None] = None
    #: One of IMPORTANCES.
    contract_importance: ClassVar[str] = "normal"
    #: After this date, publishing this version logs a warning; None: not deprecated.
    contract_deprecated_after: ClassVar[date | None] = None

    def __init_subclass__(
        cls,
        *,
        topic: str | None = None,
        key: str | None = None,
        importance: str | None = None,
        deprecated_after: date | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        where = f"{cls.__module__}.{cls.__qualname__}"
        # ``topic: ClassVar[str] = ...`` in the class body was the way before the keyword; still read.
        # (A field that happens to be called ``topic`` is data, not the declaration.)
        body_topic = cls.__dict__.get("topic")
        is_field = "topic" in {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        if topic is None and isinstance(body_topic, str) and not is_field:
            topic = body_topic
        if topic is not None and (not isinstance(topic, str) or not topic):
            raise TypeError(f"{where}: topic= must be a non-empty string, got {topic!r}")
        cls.contract_topic = topic
        if topic is not None and not is_field:
            # ``Contract.topic`` reads as it did when the topic was a class attribute.
            type.__setattr__(cls, "topic", topic)
        if key is not None:
            fields = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
            if key not in fields:
                raise TypeError(
                    f"{where}: key={key!r} names no field of the contract — use one of its fields "
                    f"({', '.join(fields) or 'it has none'}) whose value orders its messages, e.g. key={fields[0]!r}"
                    if fields
                    else f"{where}: key={key!r} names no field of the contract, which has no fields"
                )
        cls.contract_key = key
        if importance is None:
            importance = "normal"
        if importance not in IMPORTANCES:
            raise TypeError(f"{where}: importance={importance!r} is not one of {', '.join(IMPORTANCES)}")
        cls.contract_importance = importance
        cls.contract_deprecated_after = _as_date(deprecated_after, where)
        _declared.setdefault((cls.message_name, cls.message_version), weakref.WeakSet()).add(cls)


def _as_date(value: date | str | None, where: str) -> date | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise TypeError(f"{where}: deprecated_after={value!r} must be a date or an ISO date string like '2027-06-30'")


def topic_of(contract: type[Message]) -> str:
    """The topic a message class is published on: its declared ``topic=``, else its message name."""
    return getattr(contract, "contract_topic", None) or contract.message_name


def partition_key_of(message: Message) -> str | None:
    """The value of the field the message's contract declares as ``key=``, as a string; None without one."""
    field = getattr(type(message), "contract_key", None)
    if field is None:
        return None
    value = getattr(message, field)
    return None if value is None else str(value)


def warn_if_deprecated(contract: type[Message], today: date | None = None) -> bool:
    """Log a warning the first time a contract version past its ``deprecated_after`` date is published; True if past."""
    after = getattr(contract, "contract_deprecated_after", None)
    if after is None or (today or date.today()) <= after:
        return False
    marker = (contract.message_name, contract.message_version)
    if marker not in _warned:
        _warned.add(marker)
        log.warning(
            "publishing %s v%d, deprecated after %s: move its producers to the newest version, "
            "then stop publishing this one",
            contract.message_name, contract.message_version, after.isoformat(),
        )  # fmt: skip
    return True


def declared_versions(name: str, near: str = "") -> dict[int, type[IntegrationEvent]]:
    """Every declared class of contract ``name`` still imported, by version; of several, the one whose module is nearest ``near``."""

    def nearness(cls: type[IntegrationEvent]) -> tuple[int, str]:
        shared = 0
        for mine, theirs in zip(cls.__module__.split("."), near.split(".")):
            if mine != theirs:
                break
            shared += 1
        return shared, f"{cls.__module__}.{cls.__qualname__}"

    found = {}
    for (n, version), classes in list(_declared.items()):
        candidates = list(classes)
        if n == name and candidates:
            found[version] = max(candidates, key=nearness)
    return found
