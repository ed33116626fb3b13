"""Crypto-shredding: personal fields sealed per data subject with AES-GCM, readable until the subject is forgotten.

How it fits together (docs/decisions/0019):

- A field declared ``Annotated[T, Personal(subject="buyer_id")]`` is written as a token string
  ``tidings:pd1:<key id>:<base64 nonce+ciphertext>``: the field's JSON value sealed with the data
  key of the subject whose id is in the ``subject`` field. Everything else in the payload stays
  plain JSON, so ids, types and envelopes remain readable and indexable.
- Each subject's data key is random, wrapped by the master key (``TIDINGS_MASTER_KEY``) and kept in
  ``tidings_subject_keys`` under an HMAC of the subject's id — the id itself is not stored there.
- Reading replaces every top-level token by its plaintext, or by the field's mask once the key is
  gone, *before* upcasting and the typed decode: upcasters, handlers and projections only ever see
  plaintext or the mask. A token whose key exists but whose ciphertext does not authenticate is
  an error (tampering or corruption), never garbage and never the mask.
- ``SubjectKeys`` (tidings.store.subject_keys) is the key ring of one unit of work (a command, a consumer's batch, a
  projection's batch): it fetches the keys a batch needs in one query and caches them for the
  unit, and no longer — so a subject forgotten elsewhere is forgotten here by the next unit.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tidings.domain.personal import DEFAULT_MASK, Personal
from tidings.messaging.errors import MessageError

__all__ = [
    "MASTER_KEY_ENV",
    "MasterKey",
    "MasterKeyMissing",
    "PersonalDataError",
    "PersonalField",
    "KeyRing",
    "WrappedKey",
    "TamperedPersonalData",
    "WrongMasterKey",
    "is_sealed",
    "personal_fields",
    "scrubbed",
]

#: The environment variable holding the master key: 32 random bytes, base64 (``tidings subjects new-key``).
MASTER_KEY_ENV = "TIDINGS_MASTER_KEY"

TOKEN_PREFIX = "tidings:pd1:"
_SEALED = b'"' + TOKEN_PREFIX.encode()
_KEY_ID_LENGTH = 16  # secrets.token_urlsafe(12)
_KEY_ID = re.compile(rb'"tidings:pd1:([A-Za-z0-9_-]{16}):')
_KEY_ID_SHAPE = re.compile(r"[A-Za-z0-9_-]{16}")
_NONCE = 12
_encoder = msgspec.json.Encoder()


class PersonalDataError(MessageError):
    """Personal data that cannot be sealed or opened as stored; retrying does not help."""


class MasterKeyMissing(PersonalDataError):
    """Personal data is to be written or read, but no master key is configured."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what} needs the master key, but {MASTER_KEY_ENV} is not set — set it to the base64 key this "
            f"store's personal data was sealed with (a new deployment makes one with `tidings subjects new-key`)"
        )


class WrongMasterKey(PersonalDataError):
    """The configured master key is malformed, or is not the one that wrapped this store's subject keys."""


class TamperedPersonalData(PersonalDataError):
    """A sealed field whose key exists does not authenticate: the stored bytes were altered or corrupted."""

    def __init__(self, field: str, what: str, reason: str) -> None:
        self.field = field
        super().__init__(
            f"personal field {field!r} of {what} cannot be opened: {reason} — the stored ciphertext was altered "
            "or corrupted (its subject is not forgotten: the key exists); restore it from a backup or forget the subject"
        )


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """One subject's data key as stored: wrapped by the master key whose id is ``master_key_id``."""

    key_id: str
    subject_digest: str
    master_key_id: str
    wrapped_key: bytes


@dataclass(frozen=True, slots=True)
class PersonalField:
    """One personal field of a class: its name, the field holding its subject's id, and its mask."""

    name: str
    subject: str
    mask: Any


_fields_cache: dict[type, tuple[PersonalField, ...]] = {}


def personal_fields(cls: type) -> tuple[PersonalField, ...]:
    """The fields of a message or aggregate class marked ``Personal``, checked once per class."""
    found = _fields_cache.get(cls)
    if found is not None:
        return found
    hints = typing.get_type_hints(cls, include_extras=True)
    result = []
    for name, hint in hints.items():
        if typing.get_origin(hint) is not Annotated:
            continue
        for marker in hint.__metadata__:
            if not isinstance(marker, Personal):
                continue
            if marker.subject not in hints:
                raise TypeError(
                    f"{cls.__qualname__}.{name}: Personal(subject={marker.subject!r}) names no field of "
                    f"{cls.__qualname__}; subject must name the field holding the data subject's id"
                )
            try:
                msgspec.json.decode(_encoder.encode(marker.mask), type=hint.__origin__)
            except (msgspec.ValidationError, TypeError) as exc:
                raise TypeError(
                    f"{cls.__qualname__}.{name}: the mask {marker.mask!r} does not fit the field's type "
                    f"({exc}); give Personal(mask=...) a value of that type"
                ) from None
            result.append(PersonalField(name, marker.subject, marker.mask))
    found = _fields_cache[cls] = tuple(result)
    return found


def is_sealed(payload: bytes | str) -> bool:
    """Whether stored bytes hold a sealed field (a cheap substring test, made on every read)."""
    return (_SEALED in payload) if isinstance(payload, bytes) else (_SEALED.decode() in payload)


class MasterKey:
    """The key that wraps every subject's data key and keys the digests that find them."""

    def __init__(self, raw: bytes) -> None:
        if len(raw) != 32:
            raise WrongMasterKey(f"the master key must be 32 bytes, got {len(raw)}; make one with `tidings subjects new-key`")
        self._aead = AESGCM(raw)
        self._mac = raw
        #: A fingerprint stored with each wrapped key, so a wrong master key is named as such.
        self.id = hmac.new(raw, b"tidings master key id", hashlib.sha256).hexdigest()[:16]

    @classmethod
    def from_text(cls, text: str) -> MasterKey:
        """A master key from its base64 text (standard or URL-safe alphabet)."""
        try:
            raw = base64.urlsafe_b64decode(text.strip().replace("+", "-").replace("/", "_") + "==")
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 32:
            raise WrongMasterKey(
                f"{MASTER_KEY_ENV} is not the base64 text of 32 bytes ({len(raw)} decoded); "
                "make one with `tidings subjects new-key`"
            )
        return cls(raw)

    @staticmethod
    def generate() -> str:
        """A fresh random master key, as the text to put into the environment."""
        return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()

    def digest(self, subject: str) -> str:
        """The name of a subject's key row: an HMAC of its id, useless without the master key."""
        return hmac.new(self._mac, b"subject:" + subject.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()

    def wrap(self, key_id: str, data_key: bytes) -> bytes:
        """A data key sealed under the master key, bound to its key id."""
        nonce = secrets.token_bytes(_NONCE)
        return nonce + self._aead.encrypt(nonce, data_key, b"tidings subject key " + key_id.encode())

    def unwrap(self, stored: WrappedKey) -> bytes:
        """The data key of a stored row; WrongMasterKey if this master key did not wrap it."""
        if stored.master_key_id != self.id:
            raise WrongMasterKey(
                f"subject key {stored.key_id} was wrapped by master key {stored.master_key_id}, but {MASTER_KEY_ENV} "
                f"is master key {self.id} — set the master key this store was written with"
            )
        try:
            return self._aead.decrypt(
                stored.wrapped_key[:_NONCE], stored.wrapped_key[_NONCE:], b"tidings subject key " + stored.key_id.encode()
            )
        except InvalidTag:
            raise WrongMasterKey(
                f"subject key {stored.key_id} does not open with master key {self.id}: the row was altered"
            ) from None


_master: tuple[str, MasterKey] | None = None


def master_key(what: str) -> MasterKey:
    """The master key from the environment (parsed once per value); MasterKeyMissing naming ``what`` needs it."""
    global _master
    text = os.environ.get(MASTER_KEY_ENV, "")
    if not text.strip():
        raise MasterKeyMissing(what)
    if _master is None or _master[0] != text:
        _master = (text, MasterKey.from_text(text))
    return _master[1]


class KeyRing:
    """Subject keys in memory, and sealing and opening with them; the store's SubjectKeys fills it."""

    def __init__(self, master: MasterKey | None = None) -> None:
        self._master = master
        self._by_subject: dict[str, tuple[str, AESGCM]] = {}
        #: key id → its cipher, or None once the subject is forgotten (the row is gone).
        self._by_id: dict[str, AESGCM | None] = {}

    def master(self, what: str) -> MasterKey:
        """The master key this ring uses (the environment's unless one was given)."""
        if self._master is None:
            self._master = master_key(what)
        return self._master

    def remember(self, master: MasterKey, rows: Iterable[WrappedKey], subjects: dict[str, str] | None = None) -> None:
        """Cache the keys of stored rows (``subjects``: digest → subject id, for rows found by subject)."""
        for row in rows:
            cipher = AESGCM(master.unwrap(row))
            self._by_id[row.key_id] = cipher
            if subjects is not None:
                self._by_subject[subjects[row.subject_digest]] = (row.key_id, cipher)

    def missing_subjects(self, subjects: Iterable[str]) -> set[str]:
        """The subjects among ``subjects`` whose keys are not cached yet."""
        return {s for s in subjects if s not in self._by_subject}

    def missing_key_ids(self, payloads: Iterable[bytes | str]) -> set[str]:
        """The key ids that sealed fields of ``payloads`` refer to and that are not cached yet."""
        wanted: set[str] = set()
        for payload in payloads:
            if is_sealed(payload):  # a substring test per row: a rebuild reads millions of them
                data = payload.encode() if isinstance(payload, str) else payload
                wanted.update(m.decode() for m in _KEY_ID.findall(data))
        return wanted - self._by_id.keys()

    def forgotten(self, key_ids: Iterable[str]) -> None:
        """Mark key ids whose rows are gone: their fields read as masks."""
        for key_id in key_ids:
            self._by_id.setdefault(key_id, None)

    # -- sealing and opening ---------------------------------------------------------------------

    def seal(self, obj: Any, what: str) -> bytes:
        """The JSON of a message or aggregate-state dict with its personal fields sealed (subjects prepared first)."""
        fields = personal_fields(type(obj) if not isinstance(obj, tuple) else obj[0])
        data = msgspec.to_builtins(obj if not isinstance(obj, tuple) else obj[1])
        plain = dict(data)
        for field in fields:
            value = plain.get(field.name)
            if value is None or value == "" or value == field.mask:
                continue  # nothing personal in an absent or empty value, or in a forgotten one's mask
            subject = subject_of(plain, field, what)
            if subject not in self._by_subject:
                raise PersonalDataError(
                    f"{what}: the key of the subject in {field.subject!r} was not fetched; await prepare_subjects first"
                )
            key_id, cipher = self._by_subject[subject]
            nonce = secrets.token_bytes(_NONCE)
            sealed = cipher.encrypt(nonce, _encoder.encode(value), _aad(key_id, field.name))
            data[field.name] = TOKEN_PREFIX + key_id + ":" + base64.urlsafe_b64encode(nonce + sealed).decode()
        return _encoder.encode(data)

    def open(self, payload: bytes | str, cls: type | None, what: str) -> bytes | str:
        """``payload`` with every sealed top-level field replaced by its plaintext, or its mask if forgotten."""
        if not is_sealed(payload):
            return payload
        try:
            data = msgspec.json.decode(payload)
        except msgspec.DecodeError:
            return payload  # not JSON: the caller's decode reports it as it would without sealing
        if not isinstance(data, dict):
            return payload
        fields = personal_fields(cls) if cls is not None else ()
        masks = {f.name: f.mask for f in fields}
        opened: dict[str, str] = {}
        for name, value in data.items():
            if isinstance(value, str) and value.startswith(TOKEN_PREFIX):
                data[name] = self._open_field(name, value, masks.get(name, DEFAULT_MASK), what)
                opened[name] = value[len(TOKEN_PREFIX) : len(TOKEN_PREFIX) + _KEY_ID_LENGTH]
        for field in fields:
            # The key that sealed a field is its subject's: remembered, a command that loads a
            # buyer's license and writes about that buyer needs no second query for the key.
            key_id = opened.get(field.name)
            subject = data.get(field.subject)
            cipher = self._by_id.get(key_id) if key_id else None
            if cipher is not None and subject not in (None, "") and subject != masks.get(field.subject):
                self._by_subject.setdefault(str(subject), (key_id, cipher))  # type: ignore[arg-type]
        return _encoder.encode(data)

    def _open_field(self, name: str, token: str, mask: Any, what: str) -> Any:
        key_id, _, body = token[len(TOKEN_PREFIX) :].partition(":")
        if not _KEY_ID_SHAPE.fullmatch(key_id):
            raise TamperedPersonalData(name, what, f"the value starts like a sealed field but names no key id ({key_id[:20]!r})")
        if key_id not in self._by_id:
            raise PersonalDataError(
                f"{what} was read without fetching its subject keys first (field {name!r}); "
                "call prepare_payloads of the batch's SubjectKeys before opening it"
            )
        cipher = self._by_id[key_id]
        if cipher is None:
            return mask
        try:
            raw = base64.urlsafe_b64decode(body.encode())
            plain = cipher.decrypt(raw[:_NONCE], raw[_NONCE:], _aad(key_id, name))
        except (binascii.Error, ValueError):
            raise TamperedPersonalData(name, what, "the token is not valid base64") from None
        except InvalidTag:
            raise TamperedPersonalData(name, what, "AES-GCM authentication failed") from None
        return msgspec.json.decode(plain)

    def values(self, payload: bytes | str) -> list[str]:
        """The plaintext strings of ``payload``'s sealed fields (to scrub them from error texts)."""
        if not is_sealed(payload):
            return []
        opened = self.open(payload, None, "an error text")
        data = msgspec.json.decode(payload)
        plain = msgspec.json.decode(opened)
        return [
            str(plain[k])
            for k, v in data.items()
            if isinstance(v, str) and v.startswith(TOKEN_PREFIX) and plain.get(k) not in (None, DEFAULT_MASK, "")
        ]


def scrubbed(text: str, values: Iterable[str]) -> str:
    """``text`` with each personal value replaced by a placeholder (an error may quote what it was handling)."""
    for value in values:
        text = text.replace(value, "[personal data]")
    return text


def subject_of(data: dict[str, Any], field: PersonalField, what: str) -> str:
    """The subject id of a personal field in plain data; an error if it is missing."""
    subject = data.get(field.subject)
    if subject is None or subject == "":
        raise PersonalDataError(
            f"{what}: personal field {field.name!r} has a value but its subject field {field.subject!r} is empty — "
            "personal data must name the subject it belongs to"
        )
    return str(subject)


def subjects_of(obj: Any, what: str) -> list[str]:
    """The subjects whose keys sealing ``obj`` (a message, or (aggregate class, state)) needs."""
    cls, data = (obj[0], obj[1]) if isinstance(obj, tuple) else (type(obj), None)
    fields = personal_fields(cls)
    if not fields:
        return []
    if data is None:
        data = {f: getattr(obj, f) for f in {x.name for x in fields} | {x.subject for x in fields}}
    plain = msgspec.to_builtins(data)
    return [subject_of(plain, f, what) for f in fields if plain.get(f.name) not in (None, "", f.mask)]


def _aad(key_id: str, field: str) -> bytes:
    # Bound to the key and the field: a sealed value moved into another field or under another
    # key id does not authenticate.
    return f"tidings pd1 {key_id} {field}".encode()
