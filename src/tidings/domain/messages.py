"""Immutable messages of the domain: commands, domain events, and the base they share."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, dataclass_transform

__all__ = ["Message", "DomainEvent", "Command"]


@dataclass_transform(frozen_default=True, kw_only_default=True)
class Message:
    """Base of every message: subclasses become frozen, keyword-only dataclasses with a name and version.

    ``class LicensePurchased(DomainEvent): buyer: str`` is all a user writes; ``version=2`` and
    ``name="..."`` may be given as class keywords when a message evolves or needs a stable name.
    """

    message_name: ClassVar[str]
    message_version: ClassVar[int]

    def __init_subclass__(cls, *, name: str | None = None, version: int = 1, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if type(version) is not int or version < 1:
            raise TypeError(f"{cls.__qualname__}: version must be a positive int, got {version!r}")
        cls.message_name = name or cls.__name__
        cls.message_version = version
        # Applied here rather than by a decorator so a user's message reads like a plain class.
        dataclasses.dataclass(frozen=True, kw_only=True)(cls)


class DomainEvent(Message):
    """A fact that happened inside one bounded context, named in the past tense (``LicensePurchased``)."""


class Command(Message):
    """An intent to change one aggregate (``PurchaseLicense``); checked by ``validate`` before it is handled.

    Field types are checked by the application layer; override ``validate`` for rules on values and
    raise :class:`~tidings.domain.errors.ValidationError` naming the field.
    """

    def validate(self) -> None:
        """Raise ValidationError if a field's value is unacceptable; the default accepts everything."""
