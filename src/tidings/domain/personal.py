"""The marker of personal data: a field that is sealed per data subject and can be forgotten."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Personal", "DEFAULT_MASK"]

#: What a forgotten personal field reads as when its declaration gives no mask.
DEFAULT_MASK = "[forgotten]"


@dataclass(frozen=True, slots=True)
class Personal:
    """Marks a message or aggregate field as personal data of the subject named by another field.

    ``buyer_name: Annotated[str, Personal(subject="buyer_id", mask="[forgotten]")]`` stores the
    buyer's name sealed with the key of the subject whose id is in ``buyer_id`` (a field may name
    itself). Once that subject is forgotten every read sees ``mask``, which must fit the field's type.
    """

    subject: str
    mask: Any = DEFAULT_MASK
