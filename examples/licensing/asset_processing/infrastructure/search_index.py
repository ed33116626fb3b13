"""The SearchIndex read model: assets ready for search with their metadata, and the queries that read it.

It is fed from the integration event ``AssetReadyForSearch`` through a consumer of that contract's
topic (the projection's ``apply`` is the route), not from the journal: the saga publishes that
event to the outbox, and no domain event carries everything it says. So the Projector does not
run it (a rebuild from the journal would find nothing); its history is the topic, and the tables
are created here, idempotently, the first time a message or a query needs them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

import msgspec

from examples.licensing.contracts import AssetReadyForSearch
from tidings.domain import ValidationError
from tidings.messaging import Envelope
from tidings.runtime import Projection, handles
from tidings.store import Store

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "MAX_QUERY_LENGTH", "MAX_QUERY_WORDS", "SearchEntry", "SearchIndex", "SearchQueries", "search_terms"]

#: Results per query unless asked otherwise, and the most a query may ask for.
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
#: The longest query, and the most words it may have: each word is one LIKE term of the query,
#: and SQLite refuses an expression tree deeper than 1,000 ("Expression tree is too large").
MAX_QUERY_LENGTH = 200
MAX_QUERY_WORDS = 32

TABLE = "asset_search_index"
_COLUMNS = (
    "asset_id, owner_id, title, media_type, size_bytes, width, height, format, camera_make, camera_model, "
    "captured_at, keywords, ready_at"
)


class SearchIndex(Projection, name="SearchIndex"):
    """Searchable assets, one row each, with the text a search matches against (lower-cased)."""

    tables = {
        TABLE: (
            "CREATE TABLE IF NOT EXISTS {asset_search_index} ("
            "asset_id TEXT PRIMARY KEY, owner_id TEXT NOT NULL, title TEXT NOT NULL, media_type TEXT NOT NULL, "
            "size_bytes BIGINT NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL, format TEXT NOT NULL, "
            "camera_make TEXT, camera_model TEXT, captured_at TEXT, keywords TEXT NOT NULL, "
            "search_text TEXT NOT NULL, ready_at TEXT NOT NULL, tenant TEXT NOT NULL);"
            "CREATE INDEX IF NOT EXISTS {asset_search_index}_by_title ON {asset_search_index} (title, asset_id)"
        )
    }

    @handles
    def ready(self, event: AssetReadyForSearch, envelope: Envelope) -> None:
        """Add the asset (or refresh it: a republished event writes the same row again)."""
        self.execute(
            "INSERT INTO {asset_search_index} (asset_id, owner_id, title, media_type, size_bytes, width, height, "
            "format, camera_make, camera_model, captured_at, keywords, search_text, ready_at, tenant) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (asset_id) DO UPDATE SET owner_id = excluded.owner_id, title = excluded.title, "
            "media_type = excluded.media_type, size_bytes = excluded.size_bytes, width = excluded.width, "
            "height = excluded.height, format = excluded.format, camera_make = excluded.camera_make, "
            "camera_model = excluded.camera_model, captured_at = excluded.captured_at, keywords = excluded.keywords, "
            "search_text = excluded.search_text, ready_at = excluded.ready_at",
            (
                event.asset_id,
                event.owner_id,
                event.title,
                event.media_type,
                event.size_bytes,
                event.width,
                event.height,
                event.format,
                event.camera_make,
                event.camera_model,
                event.captured_at.isoformat() if event.captured_at else None,
                msgspec.json.encode(list(event.keywords)).decode(),
                _searchable_text(event),
                envelope.occurred_at.isoformat(),
                envelope.tenant or "",  # '' for none: a tenant's search lists only its own assets
            ),
        )


@dataclass(frozen=True, slots=True)
class SearchEntry:
    """One searchable asset as the read model holds it."""

    asset_id: str
    owner_id: str
    title: str
    media_type: str
    size_bytes: int
    width: int
    height: int
    format: str
    camera_make: str | None
    camera_model: str | None
    captured_at: datetime | None
    keywords: tuple[str, ...]
    ready_at: datetime


class SearchQueries:
    """Reads the SearchIndex of one store, and keeps its tables in place for the consumer that writes them."""

    def __init__(self, store: Store, projection: SearchIndex | None = None) -> None:
        self.store = store
        self.projection = projection or SearchIndex()
        self._prepared = False
        self._lock = asyncio.Lock()

    async def prepare(self) -> None:
        """Create the read model's tables if missing, in a transaction of their own (idempotent)."""
        if self._prepared:
            return
        async with self._lock:
            if not self._prepared:
                async with self.store.transaction() as tx:
                    await self._create(tx)
                self._prepared = True

    async def _create(self, tx: Store) -> None:
        for statement in self.projection.ddl(tx.dialect):
            await tx.run(statement)

    async def apply(self, envelope: Envelope, event: AssetReadyForSearch, tx: Store) -> None:
        """The consumer route: apply one AssetReadyForSearch inside the consumer's transaction."""
        try:
            if not self._prepared:
                # In the consumer's transaction and without the lock: on SQLite that transaction
                # holds the store's write lock, which prepare() would wait for under our lock.
                await self._create(tx)
                self._prepared = True
            await self.projection.apply(envelope, event, tx)
        except BaseException:
            # The tables may have been created in this very transaction, which is now rolling
            # back: look again next time rather than trusting a creation that did not commit.
            self._prepared = False
            raise

    async def search(self, text: str = "", *, limit: int = DEFAULT_LIMIT, tenant: str | None = None) -> list[SearchEntry]:
        """Assets whose title, keywords, owner, format or camera contain every word of ``text``, by title; all if blank.

        With ``tenant``, only that tenant's assets.
        """
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
        terms = search_terms(text)
        if len(text) > MAX_QUERY_LENGTH or len(terms) > MAX_QUERY_WORDS:
            raise ValidationError(
                f"a search has at most {MAX_QUERY_WORDS} words and {MAX_QUERY_LENGTH} characters, "
                f"got {len(terms)} words in {len(text)}; search for fewer words",
                field="q",
            )
        await self.prepare()
        conditions = ["search_text LIKE ? ESCAPE '!'"] * len(terms)
        params: list[object] = [f"%{_escape_like(term)}%" for term in terms]
        if tenant is not None:
            conditions.append("tenant = ?")
            params.append(tenant)
        where = " AND ".join(conditions)
        sql = f"SELECT {_COLUMNS} FROM {TABLE} {'WHERE ' + where if where else ''} ORDER BY title, asset_id LIMIT ?"
        rows = await self.store.fetch(sql, (*params, limit))
        return [_entry(row) for row in rows]

    async def get(self, asset_id: str, *, tenant: str | None = None) -> SearchEntry | None:
        """The searchable asset with this id (of ``tenant`` when given), or None if it is not (yet) ready for search."""
        await self.prepare()
        if tenant is None:
            rows = await self.store.fetch(f"SELECT {_COLUMNS} FROM {TABLE} WHERE asset_id = ?", (asset_id,))
        else:
            rows = await self.store.fetch(f"SELECT {_COLUMNS} FROM {TABLE} WHERE asset_id = ? AND tenant = ?", (asset_id, tenant))
        return _entry(rows[0]) if rows else None

    async def count(self) -> int:
        """How many assets are searchable."""
        await self.prepare()
        rows = await self.store.fetch(f"SELECT count(*) FROM {TABLE}")
        return int(rows[0][0])


def search_terms(text: str) -> list[str]:
    """The lower-cased words of a query, each once (a search matches rows that contain all of them)."""
    return list(dict.fromkeys(word for word in text.lower().split() if word))


def _searchable_text(event: AssetReadyForSearch) -> str:
    parts = [event.title, event.owner_id, event.format, event.media_type, event.camera_make, event.camera_model, *event.keywords]
    return " ".join(part for part in parts if part).lower()


def _escape_like(term: str) -> str:
    # '!' escapes LIKE's wildcards, so a search for "100%" or "a_b" matches those characters literally.
    return term.replace("!", "!!").replace("%", "!%").replace("_", "!_")


def _entry(row: tuple[object, ...]) -> SearchEntry:
    captured = row[10]
    return SearchEntry(
        asset_id=str(row[0]),
        owner_id=str(row[1]),
        title=str(row[2]),
        media_type=str(row[3]),
        size_bytes=int(row[4]),  # type: ignore[call-overload]
        width=int(row[5]),  # type: ignore[call-overload]
        height=int(row[6]),  # type: ignore[call-overload]
        format=str(row[7]),
        camera_make=row[8] if row[8] is None else str(row[8]),
        camera_model=row[9] if row[9] is None else str(row[9]),
        captured_at=datetime.fromisoformat(str(captured)) if captured else None,
        keywords=tuple(msgspec.json.decode(str(row[11]))),
        ready_at=datetime.fromisoformat(str(row[12])),
    )
