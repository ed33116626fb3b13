"""Immutable messages of the domain: commands, domain events, and the base they share."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, ClassVar, dataclass_transform

from tidings.domain.errors import InvalidArguments

__all__ = ["Message", "DomainEvent", "Command"]


def _naming_bad_arguments(cls: type, generated: Callable[..., None]) -> Callable[..., None]:
    """Wrap a message's generated ``__init__`` so a missing, unknown or positional argument is an InvalidArguments."""

    @functools.wraps(generated)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            generated(self, *args, **kwargs)
        except TypeError:
            # Only the call's shape is explained; a TypeError from the message's own __post_init__ stays as it is.
            problem = _argument_problem(cls, args, kwargs)
            if problem is None:
                raise
            field, reason = problem
            raise InvalidArguments(reason, field=field, message_type=cls.__name__) from None

    return __init__


def _argument_problem(cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, str] | None:
    fields = [f for f in dataclasses.fields(cls) if f.init]
    names = [f.name for f in fields]
    if args:
        shape = ", ".join(f"{name}=..." for name in names)
        return names[0] if names else "", f"messages take keyword arguments only ({shape}), got {len(args)} positional"
    unknown = [name for name in kwargs if name not in names]
    if unknown:
        return unknown[0], f"no such field; the fields are {', '.join(names) or '(none)'}"
    missing = [
        f.name
        for f in fields
        if f.name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        others = f" (so are {', '.join(missing[1:])})" if len(missing) > 1 else ""
        return missing[0], f"is required{others}; pass it as a keyword argument"
    return None


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
        own_init = "__init__" in cls.__dict__
        # Applied here rather than by a decorator so a user's message reads like a plain class.
        dataclasses.dataclass(frozen=True, kw_only=True)(cls)
        if not own_init:
            cls.__init__ = _naming_bad_arguments(cls, cls.__init__)  # type: ignore[method-assign]


class DomainEvent(Message):
    """A fact that happened inside one bounded context, named in the past tense (``LicensePurchased``)."""


class Command(Message):
    """An intent to change one aggregate (``PurchaseLicense``); checked by ``validate`` before it is handled.

    The application layer converts fields to their declared types first (a dict to a nested class,
    a string to a ``datetime``...), so ``validate`` sees typed values; override it for rules on
    values and raise :class:`~tidings.domain.errors.ValidationError` naming the field.
    """

    def validate(self) -> None:
        """Raise ValidationError if a field's value is unacceptable; the default accepts everything."""

