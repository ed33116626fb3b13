"""The main job (``make demo``): the media-licensing story through the HTTP API, checking every outcome it expects.

On the embedded default (a fresh SQLite file, the ``local:`` broker) or on servers by URL
(``--database postgresql://… --broker nats://…``: a fresh PostgreSQL schema and a broker namespace
of its own per run), the whole platform runs in this process — relay, consumers, projector and
scheduler as tasks, the API in-process over httpx — and the story is driven like a client would:

1. photographers upload assets: metadata is extracted, the asset indexed, its saga completes and
   it becomes searchable; a corrupt file is retried then dead-lettered, and its saga stalls;
2. licenses are offered and purchased; a second purchase is refused (409);
3. a buyer reports usage past the allowance, and Compliance opens an investigation;
4. a legacy partner sends a batch with duplicates and garbage: the ACL applies each report once
   and dead-letters what it cannot understand, with the reason; nothing accepted is lost;
5. the three read models, and the trace of the story's correlation id across all three contexts.

Progress goes to stderr; the read models, the trace and the list of outcomes to stdout. The exit
status is 0 only if every expected outcome was observed; otherwise the failed ones are named.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from opentelemetry import propagate, trace
from rich.console import Console
from rich.rule import Rule
from rich.table import Table

from examples.licensing.api import CORRELATION_HEADER, create_app
from examples.licensing.kernel import Settings
from examples.licensing.platform import CONTEXTS, Platform
from tidings.cli.trace import collect_trace, trace_tree
from tidings.messaging.ids import new_id
from tidings.messaging.redaction import redact_url

__all__ = ["Outcome", "ScenarioResult", "demo_settings", "isolated_broker", "main", "run_scenario"]

OWNER = "ada"
PARTNER = "acme-media"
#: Good uploads: (title, media type). Each one must end searchable.
GOOD_ASSETS = (("Harbour at dawn", "image/jpeg"), ("Dunes at noon", "image/png"), ("Glacier, blue hour", "image/tiff"))
#: The metadata reader cannot parse a file whose title says "corrupt".
CORRUPT_ASSET = ("Corrupt scan of an old map", "image/jpeg")
EXTRACTOR = "asset_processing.metadata-extractor"
PARTNER_FEED_CONSUMER = "compliance.partner-feed"


def demo_settings() -> Settings:
    """Settings that make the story quick: short retries, and a stall deadline the demo can wait for."""
    # The stall deadline must leave the good assets ample time (they are ready well under a second
    # here, also on servers) while the corrupt one visibly stalls within the run.
    return Settings(stall_after=5.0, extraction_delay=0.0, immediate_retries=1, delayed_retries=2, retry_base=0.05)


def isolated_broker(url: str, run_id: str) -> dict[str, Any]:
    """Broker options that give this run names of its own on a shared server (old runs' messages stay out)."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "nats":
        return {"stream": f"DEMO_{run_id}", "prefix": f"demo-{run_id}", "max_age": 3600.0}
    if scheme in ("redis", "rediss"):
        return {"prefix": f"demo-{run_id}"}
    if scheme in ("amqp", "amqps"):
        return {"exchange": f"demo-{run_id}"}
    return {}  # local: lives in the run's own store; kafka:// has no namespace option (topics are shared)


@dataclass(slots=True)
class Outcome:
    """One expected outcome of the story and whether it was observed."""

    name: str
    ok: bool
    detail: str = ""


@dataclass(slots=True)
class ScenarioResult:
    """Every outcome of one run, the story's correlation id, and how long it took."""

    outcomes: list[Outcome] = field(default_factory=list)
    correlation_id: str = ""
    elapsed: float = 0.0
    database: str = ""
    broker: str = ""

    @property
    def ok(self) -> bool:
        """Whether every expected outcome was observed (and there was at least one)."""
        return bool(self.outcomes) and all(outcome.ok for outcome in self.outcomes)

    @property
    def failed(self) -> list[Outcome]:
        """The outcomes that were not observed."""
        return [outcome for outcome in self.outcomes if not outcome.ok]


class _Story:
    """The story's steps over one running platform and an HTTP client of its API."""

    def __init__(self, platform: Platform, http: httpx.AsyncClient, out: Console, progress: Console, run_id: str) -> None:
        self.platform = platform
        self.http = http
        self.out = out
        self.progress = progress
        self.run_id = run_id
        self.result = ScenarioResult()
        self.story = new_id()  # the correlation id of asset 1's whole story
        self.corrupt_flow = new_id()
        self.partner_flow = new_id()
        self.assets: list[str] = []
        self.corrupt_asset = ""
        self.licenses: dict[str, str] = {}

    # -- bookkeeping ---------------------------------------------------------------------------

    def expect(self, name: str, ok: bool, detail: str = "") -> bool:
        self.result.outcomes.append(Outcome(name, bool(ok), "" if ok else detail))
        mark = "[green]✓[/green]" if ok else "[red]✗[/red]"
        self.progress.print(f"  {mark} {name}" + (f" [dim]— {detail}[/dim]" if detail and not ok else ""))
        return bool(ok)

    def step(self, title: str) -> None:
        self.progress.print(Rule(f"[bold]{title}[/bold]", align="left"))

    async def until(self, what: str, condition: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> bool:
        """Wait (with a spinner on stderr) until ``condition()`` holds; False after ``timeout`` s."""
        with self.progress.status(f"waiting: {what}", spinner="dots"):
            return await self.platform.settle(condition, timeout=timeout, interval=0.1)

    async def call(self, method: str, path: str, *, flow: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}) or {})
        if flow:
            headers[CORRELATION_HEADER] = flow
        # The story's span travels to the API (W3C traceparent), as any instrumented client's would.
        propagate.inject(headers)
        return await self.http.request(method, path, headers=headers, **kwargs)

    # -- 1. assets -----------------------------------------------------------------------------

    def _upload_body(self, title: str, media_type: str) -> dict[str, Any]:
        checksum = hashlib.sha256(f"{self.run_id}:{title}".encode()).hexdigest()
        return {"owner_id": OWNER, "title": title, "media_type": media_type, "size_bytes": 2_400_000 + len(title), "checksum": checksum}

    async def assets_are_processed(self) -> None:
        self.step("1. photographers upload assets; each is extracted, indexed and listed by its saga")
        accepted = 0
        for n, (title, media_type) in enumerate(GOOD_ASSETS):
            # Asset 1's upload starts the story's correlation; the others get their own.
            response = await self.call("POST", "/asset_processing/assets", flow=self.story if n == 0 else None, json=self._upload_body(title, media_type))
            if response.status_code == 202:
                accepted += 1
                self.assets.append(response.json()["asset_id"])
            else:
                self.progress.print(f"    [red]{response.status_code}[/red] {response.text}")
        self.expect(f"{len(GOOD_ASSETS)} uploads accepted (202)", accepted == len(GOOD_ASSETS), f"{accepted} accepted")

        corrupt = await self.call("POST", "/asset_processing/assets", flow=self.corrupt_flow, json=self._upload_body(*CORRUPT_ASSET))
        if self.expect("the corrupt file's upload is accepted too (its content is read later)", corrupt.status_code == 202, corrupt.text):
            self.corrupt_asset = corrupt.json()["asset_id"]

        duplicate = await self.call("POST", "/asset_processing/assets", json=self._upload_body(*GOOD_ASSETS[0]))
        self.expect("the same file uploaded again by the same owner is refused (409)", duplicate.status_code == 409, f"{duplicate.status_code} {duplicate.text}")
        invalid = await self.call("POST", "/asset_processing/assets", json={**self._upload_body("Bad", "image/jpeg"), "checksum": "not-a-digest"})
        self.expect(
            "an upload with a malformed checksum is 422 naming the field",
            invalid.status_code == 422 and invalid.json().get("field") == "body.checksum",
            f"{invalid.status_code} {invalid.text}",
        )
        unknown = await self.call("GET", "/asset_processing/assets/no-such-asset")
        self.expect("an unknown asset is 404", unknown.status_code == 404, f"{unknown.status_code}")

        async def all_searchable() -> bool:
            found = await self.call("GET", "/asset_processing/search", params={"q": "", "limit": 100})
            listed = {entry["asset_id"] for entry in found.json().get("results", [])} if found.status_code == 200 else set()
            return bool(self.assets) and set(self.assets) <= listed

        listed = await self.until("every good asset is searchable", all_searchable, timeout=30)
        states = [(await self.call("GET", f"/asset_processing/assets/{asset_id}")).json() for asset_id in self.assets]
        self.expect(
            "metadata extracted for every good asset",
            bool(states) and all(state.get("metadata") and state["metadata"]["width"] > 0 for state in states),
            str([state.get("stage") for state in states]),
        )
        self.expect(
            "every good asset indexed (with keywords)",
            bool(states) and all(state.get("stage") == "indexed" and state.get("keywords") for state in states),
            str([(state.get("stage"), state.get("keywords")) for state in states]),
        )
        completed = bool(states) and all(state.get("processing") == "complete" for state in states)
        detail = str([state.get("processing") for state in states])
        if not completed:
            archived = await self.platform.store.fetch("SELECT saga_key, outcome FROM tidings_saga_archive", ())
            running = await self.platform.store.fetch("SELECT saga_key, state FROM tidings_sagas", ())
            detail += f"; archive {archived}; running {running}"
        self.expect("every good asset's AssetProcessing saga completed", completed, detail)
        self.expect("every good asset is searchable", listed, "not all listed by /asset_processing/search")
        search = await self.call("GET", "/asset_processing/search", params={"q": "dunes"})
        self.expect(
            "a word of a title finds its asset",
            search.status_code == 200 and [e["asset_id"] for e in search.json()["results"]] == self.assets[1:2],
            search.text,
        )

    async def corrupt_asset_stalls(self) -> None:
        self.step("   the corrupt file: retried, dead-lettered with the reason; its saga stalls")
        if not self.corrupt_asset:
            self.expect("the corrupt asset is dead-lettered by the extractor", False, "its upload was not accepted")
            self.expect("the corrupt asset's saga stalls", False, "its upload was not accepted")
            return

        async def dead_lettered() -> bool:
            trace = await collect_trace(self.platform.store, self.corrupt_flow)
            return any(h.consumer == EXTRACTOR for h in trace.dead_letters)

        dead = await self.until("the extractor gives up on the corrupt file", dead_lettered, timeout=30)
        trace = await collect_trace(self.platform.store, self.corrupt_flow)
        reasons = [f"{h.reason}: {h.error}" for h in trace.dead_letters if h.consumer == EXTRACTOR]
        self.expect("the corrupt asset is dead-lettered by the extractor, after retries", dead, "no dead letter")
        self.expect(
            "…with the reason (the file cannot be read)",
            bool(reasons) and all("UnreadableFile" in reason for reason in reasons),
            str(reasons),
        )
        for reason in reasons:
            self.progress.print(f"    [dim]dead letter: {reason}[/dim]")

        async def stalled() -> bool:
            state = await self.call("GET", f"/asset_processing/assets/{self.corrupt_asset}")
            return state.status_code == 200 and state.json().get("processing") == "stalled"

        stall_after = self.platform.settings.stall_after
        self.expect(
            f"the corrupt asset's saga stalls after {stall_after:g} s",
            await self.until("the corrupt asset's stall deadline", stalled, timeout=stall_after + 20),
            "still in progress",
        )
        trace = await collect_trace(self.platform.store, self.corrupt_flow)
        published = [node.event_type for node in trace.nodes.values() if node.kind == "integration"]
        self.expect(
            "…and AssetProcessingStalled is published, not AssetReadyForSearch",
            "asset_processing.AssetProcessingStalled" in published and "asset_processing.AssetReadyForSearch" not in published,
            str(published),
        )
        search = await self.call("GET", "/asset_processing/search", params={"q": "corrupt"})
        self.expect("the corrupt asset is not searchable", search.status_code == 200 and search.json()["count"] == 0, search.text)

    # -- 2. licenses ---------------------------------------------------------------------------

    async def licenses_are_sold(self) -> None:
        self.step("2. licenses are offered and purchased; a second purchase is refused")
        if len(self.assets) < 2:
            self.expect("licenses offered for searchable assets", False, "fewer than two searchable assets")
            return
        buyers = {self.assets[0]: ("bea", 2500, 3), self.assets[1]: ("carl", 4000, 5)}
        offered = 0
        for asset_id, (buyer, price, uses) in buyers.items():
            flow = self.story if asset_id == self.assets[0] else None
            body = {"asset_id": asset_id, "buyer_id": buyer, "price_cents": price, "allowed_uses": uses}

            async def offer(body: dict[str, Any] = body, flow: str | None = flow) -> bool:
                # Licensing learns that an asset is searchable from AssetReadyForSearch (its ACL):
                # until that arrives an offer is refused, so the client retries a refused offer.
                response = await self.call("POST", "/licensing/licenses", flow=flow, json=body)
                if response.status_code == 201:
                    self.licenses[body["asset_id"]] = response.json()["license"]["license_id"]
                    return True
                return False

            if await self.until(f"Licensing can offer {asset_id[:8]}… (its ACL registered it)", offer, timeout=20):
                offered += 1
        self.expect("licenses offered for searchable assets (201)", offered == len(buyers), f"{offered} of {len(buyers)}")

        refused = await self.call(
            "POST", "/licensing/licenses", json={"asset_id": self.corrupt_asset or "x", "buyer_id": "bea", "price_cents": 100, "allowed_uses": 1}
        )
        self.expect("an asset that never became searchable cannot be offered (409)", refused.status_code == 409, f"{refused.status_code} {refused.text}")

        purchased = 0
        for asset_id, license_id in self.licenses.items():
            buyer = buyers[asset_id][0]
            flow = self.story if asset_id == self.assets[0] else None
            response = await self.call("POST", f"/licensing/licenses/{license_id}/purchase", flow=flow, json={"buyer_id": buyer})
            purchased += response.status_code == 200 and response.json()["license"]["sold"] is True
        self.expect("both licenses purchased", purchased == len(buyers), f"{purchased} purchased")

        first = self.licenses.get(self.assets[0], "missing")
        again = await self.call("POST", f"/licensing/licenses/{first}/purchase", json={"buyer_id": "bea"})
        self.expect(
            "a second purchase of the same license is refused (409)",
            again.status_code == 409 and again.json().get("error") == "domain_error",
            f"{again.status_code} {again.text}",
        )
        if again.status_code == 409:
            self.progress.print(f"    [dim]409: {again.json()['detail']}[/dim]")

    # -- 3. usage and compliance ---------------------------------------------------------------

    async def usage_opens_an_investigation(self) -> None:
        self.step("3. usage past the allowance; Compliance opens an investigation")
        license_id = self.licenses.get(self.assets[0] if self.assets else "", "")
        if not license_id:
            self.expect("usage past the allowance is reported", False, "no license to report usage on")
            self.expect("Compliance opened an investigation", False, "no license")
            return
        within = await self.call("POST", f"/licensing/licenses/{license_id}/usage", flow=self.story, json={"uses": 2})
        past = await self.call("POST", f"/licensing/licenses/{license_id}/usage", flow=self.story, json={"uses": 2})
        self.expect("usage within the allowance is counted", within.status_code == 200 and within.json()["exceeded"] is False, within.text)
        self.expect("usage past the allowance is reported as exceeded", past.status_code == 200 and past.json()["exceeded"] is True, past.text)

        async def investigation_open() -> bool:
            alerts = await self.call("GET", "/compliance/alerts")
            return alerts.status_code == 200 and any(a["license_id"] == license_id for a in alerts.json())

        opened = await self.until("Compliance receives UsageViolationDetected", investigation_open, timeout=20)
        self.expect("Compliance opened an investigation for the license", opened, "no alert for the license")
        if opened:
            alerts = (await self.call("GET", "/compliance/alerts")).json()
            alert = next(a for a in alerts if a["license_id"] == license_id)
            case = await self.call("GET", f"/compliance/investigations/{alert['investigation_id']}")
            self.expect(
                "the investigation records 4 uses against 3 allowed",
                case.status_code == 200 and case.json()["used"] == 4 and case.json()["allowed"] == 3 and case.json()["status"] == "open",
                case.text,
            )
        unknown = await self.call("GET", "/compliance/investigations/no-such-case")
        self.expect("an unknown investigation is 404", unknown.status_code == 404, str(unknown.status_code))

    # -- 4. the legacy partner feed ------------------------------------------------------------

    async def partner_feed_is_cleaned(self) -> None:
        self.step("4. a legacy partner batch with duplicates and garbage goes through the ACL")
        license_id = self.licenses.get(self.assets[1] if len(self.assets) > 1 else "", "")
        if not license_id:
            self.expect("the partner batch is accepted", False, "no purchased license for the partner to report on")
            return

        # Compliance knows a license once LicensePurchaseConfirmed reached it; reports before that
        # are refused as unknown licenses (and dead-lettered, replayable), so wait for it first.
        async def license_known() -> bool:
            rows = await self.platform.store.fetch(
                "SELECT count(*) FROM tidings_inbox WHERE consumer = ?", ("compliance.licensing-events",)
            )
            return int(rows[0][0]) >= len(self.licenses)

        await self.until("Compliance learns the purchased licenses", license_known, timeout=20)
        good = {"license": license_id, "client": "carl", "period_end": "31/12/2024"}
        records = [
            {"report_id": f"{PARTNER}-1", **good, "units_used": "2.50", "units_licensed": "5"},  # within the allowance
            {"report_id": f"{PARTNER}-2", **good, "units_used": "7", "units_licensed": "5"},  # an infringement
            {"report_id": f"{PARTNER}-1", **good, "units_used": "2.50", "units_licensed": "5"},  # a duplicate of 1
            {"report_id": f"{PARTNER}-2", **good, "units_used": "7", "units_licensed": "5"},  # a duplicate of 2
            {"report_id": f"{PARTNER}-3", **good, "units_used": "lots", "units_licensed": "5"},  # not an amount
            {"report_id": f"{PARTNER}-4", **good, "license": "no-such-license", "units_used": "1", "units_licensed": "1"},
            {"report_id": f"{PARTNER}-5", **good, "client": "mallory", "units_used": "9", "units_licensed": "5"},  # not the buyer
            {"report_id": f"{PARTNER}-6", **good, "units_used": "3", "units_licensed": "5", "period_end": "2024-12-31"},
        ]
        lines = [json.dumps(record) for record in records] + ["this line is not JSON at all", "42"]
        body = "\n".join(lines).encode()
        response = await self.call(
            "POST",
            "/compliance/partner-feed",
            flow=self.partner_flow,
            params={"partner": PARTNER},
            content=body,
            headers={"Content-Type": "application/x-ndjson"},
        )
        if not self.expect("the partner batch is accepted (202)", response.status_code == 202, f"{response.status_code} {response.text}"):
            return
        receipt = response.json()
        distinct = int(receipt["distinct"])
        self.progress.print(f"    [dim]accepted {receipt['accepted']} records, {distinct} distinct[/dim]")
        self.expect(
            "the feed sees the copies as copies",
            receipt["accepted"] == len(lines) and distinct == len(lines) - 2,
            f"accepted {receipt['accepted']}, distinct {distinct}",
        )
        partner_reports = self.platform.extra("compliance").get("partner_reports")

        async def counts() -> tuple[int, int]:
            applied = len(await partner_reports(partner=PARTNER)) if partner_reports else 0
            rows = await self.platform.store.fetch(
                "SELECT count(*) FROM tidings_dead_letters WHERE consumer = ?", (PARTNER_FEED_CONSUMER,)
            )
            return applied, int(rows[0][0])

        async def all_settled() -> bool:
            applied, dead = await counts()
            return applied + dead >= distinct

        await self.until("the ACL applies or dead-letters every distinct record", all_settled, timeout=30)
        applied, dead = await counts()
        self.expect(
            "nothing accepted is lost: distinct records = applied + dead-lettered",
            applied + dead == distinct,
            f"{distinct} distinct, {applied} applied, {dead} dead-lettered",
        )
        self.expect("the two valid reports are applied once each (copies de-duplicated)", applied == 2, f"{applied} applied")
        rows = await self.platform.store.fetch(
            "SELECT reason, error FROM tidings_dead_letters WHERE consumer = ? ORDER BY id", (PARTNER_FEED_CONSUMER,)
        )
        self.expect("every garbage record is dead-lettered with a reason", dead == 6 and all(reason for reason, _ in rows), f"{dead} dead letters")
        for reason, error in rows:
            self.progress.print(f"    [dim]dead letter: {reason}: {error.splitlines()[0] if error else ''}[/dim]")

        async def partner_infringement() -> bool:
            alerts = await self.call("GET", "/compliance/alerts")
            return any(a["license_id"] == license_id and a["last_source"].startswith("partner:") for a in alerts.json())

        self.expect(
            "the partner's infringement opened an investigation",
            await self.until("the partner's infringement reaches the alerts feed", partner_infringement, timeout=20),
            "no alert from the partner",
        )

    # -- 5. read models and the trace ----------------------------------------------------------

    async def read_models(self) -> None:
        self.step("5. the read models")
        # The projections follow the journal a little behind the commands: let them catch up.
        await self.until("the projections catch up", self.platform.idle, timeout=15)
        search = await self.call("GET", "/asset_processing/search", params={"limit": 100})
        usage = await self.call("GET", "/licensing/usage-by-day")
        alerts = await self.call("GET", "/compliance/alerts")

        table = Table(title="SearchIndex (asset_processing)", title_justify="left")
        for column in ("asset", "title", "owner", "format", "size", "camera", "keywords"):
            table.add_column(column, overflow="fold")
        for entry in search.json().get("results", []) if search.status_code == 200 else []:
            table.add_row(
                entry["asset_id"][:8] + "…",
                entry["title"],
                entry["owner_id"],
                entry["format"],
                f"{entry['width']}×{entry['height']}",
                " ".join(filter(None, (entry.get("camera_make"), entry.get("camera_model")))),
                ", ".join(entry.get("keywords", [])[:6]),
            )
        self.out.print(table)

        table = Table(title="LicenseUsageByDay (licensing)", title_justify="left")
        for column in ("day", "purchases", "usage reports", "uses", "violations"):
            table.add_column(column)
        days = usage.json() if usage.status_code == 200 else []
        for day in days:
            table.add_row(str(day["day"]), str(day["purchases"]), str(day["usage_reports"]), str(day["uses"]), str(day["violations"]))
        self.out.print(table)

        table = Table(title="ComplianceAlertsFeed (compliance), newest first", title_justify="left")
        for column in ("investigation", "license", "buyer", "status", "infringements", "used/allowed", "last source", "opened"):
            table.add_column(column, overflow="fold")
        feed = alerts.json() if alerts.status_code == 200 else []
        for alert in feed:
            table.add_row(
                alert["investigation_id"][:8] + "…",
                alert["license_id"][:8] + "…",
                alert["buyer_id"],
                alert["status"],
                str(alert["infringements"]),
                f"{alert['used']}/{alert['allowed']}",
                alert["last_source"],
                str(alert["opened_at"])[:19],
            )
        self.out.print(table)

        self.expect(
            "SearchIndex lists exactly the searchable assets",
            search.status_code == 200 and {e["asset_id"] for e in search.json()["results"]} == set(self.assets),
            search.text[:200],
        )
        totals = {key: sum(day[key] for day in days) for key in ("purchases", "usage_reports", "uses", "violations")}
        self.expect(
            "LicenseUsageByDay counts 2 purchases, 2 usage reports of 4 uses, 1 violation",
            totals == {"purchases": 2, "usage_reports": 2, "uses": 4, "violations": 1},
            str(totals),
        )
        opened = [alert["opened_at"] for alert in feed]
        self.expect(
            "ComplianceAlertsFeed lists both open investigations, newest first",
            len(feed) == 2 and opened == sorted(opened, reverse=True),
            str([(a["license_id"][:8], a["opened_at"]) for a in feed]),
        )

    async def the_trace(self) -> None:
        self.step("6. the trace of one correlation id across the three contexts")
        trace = await collect_trace(self.platform.store, self.story)
        self.out.print(trace_tree(trace))
        self.expect(
            "the story's trace spans asset_processing, licensing and compliance",
            set(CONTEXTS) <= trace.contexts,
            f"contexts in the trace: {sorted(trace.contexts)}",
        )
        kinds = {node.event_type.rsplit(".", 1)[-1] for node in trace.nodes.values()}
        expected = {"AssetUploaded", "MetadataExtracted", "AssetIndexed", "AssetReadyForSearch", "LicensePurchased", "UsageViolationDetected", "InfringementDetected"}
        self.expect("…from the upload to the infringement", expected <= kinds, f"missing: {sorted(expected - kinds)}")
        # A publication on a topic somebody reads must have been applied by one of its readers (a
        # consumer of a shared topic skips the types it does not handle, without an inbox row); a
        # contract nobody subscribes to yet, like LicenseUsageReported, is delivered and that is all.
        subscribed = {topic for consumer in self.platform.consumers for topic in consumer.topics}
        published = [node for node in trace.nodes.values() if node.kind in ("integration", "command")]
        unapplied = [
            (node.event_type, node.delivery)
            for node in published
            if node.delivery != "delivered" or (node.topic in subscribed and not any(h.applied for h in node.handlings))
        ]
        self.expect(
            "…every publication of the story delivered, and applied where a consumer reads its topic",
            bool(published) and not unapplied,
            str(unapplied),
        )
        self.expect("the story's trace holds no dead letter", not trace.dead_letters, str([h.reason for h in trace.dead_letters]))
        rows = await self.platform.store.fetch("SELECT count(*) FROM tidings_outbox WHERE parked_at IS NOT NULL", ())
        self.expect("no outbox row was parked", int(rows[0][0]) == 0, f"{rows[0][0]} parked")


async def run_scenario(
    database: str | None = None,
    broker: str | None = None,
    *,
    out: Console | None = None,
    progress: Console | None = None,
    settings: Settings | None = None,
    keep: bool = False,
) -> ScenarioResult:
    """Run the story on a fresh store (a new SQLite file, or a new PostgreSQL schema) and return what was observed."""
    out = out or Console()
    progress = progress or Console(stderr=True)
    started = time.perf_counter()
    run_id = uuid.uuid4().hex[:10]
    broker_url = broker or "local:"
    with contextlib.ExitStack() as stack:
        schema = None
        if database is None:
            directory = Path(tempfile.mkdtemp(prefix="tidings-demo-")) if keep else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tidings-demo-")))
            database_url = f"sqlite:///{directory / 'tidings-demo.db'}"
        else:
            database_url = database
            if database.startswith(("postgresql://", "postgres://")):
                schema = f"demo_{run_id}"
        options = isolated_broker(broker_url, run_id)
        where = redact_url(database_url) + (f" (schema {schema})" if schema else "")
        progress.print(f"[bold]tidings media licensing[/bold] on {where} with {redact_url(broker_url)}")
        platform = Platform(database_url, broker_url, settings=settings or demo_settings(), schema=schema, broker_options=options)
        result = ScenarioResult(database=where, broker=redact_url(broker_url))
        try:
            with progress.status("opening the store and the broker, building the contexts"):
                await platform.open()
            result = await _drive(platform, out, progress, run_id, result)
        finally:
            await platform.stop()
            if platform.store is not None and not keep:
                await _clean_up(platform, schema, broker_url, options)
            await platform.close()
    result.elapsed = time.perf_counter() - started
    return result


async def _drive(platform: Platform, out: Console, progress: Console, run_id: str, result: ScenarioResult) -> ScenarioResult:
    for name in CONTEXTS:
        ok = name in platform.contexts
        result.outcomes.append(Outcome(f"context {name} is built", ok, platform.missing.get(name, "")))
        if not ok:
            progress.print(f"  [red]✗ context {name} is missing:[/red] {platform.missing.get(name)}")
    if set(CONTEXTS) - set(platform.contexts):
        return result  # the story needs every context; saying so beats pretending
    with progress.status("starting relay, consumers, projector and scheduler"):
        await platform.start(("relay", "consumers", "projector", "scheduler"))
    transport = httpx.ASGITransport(app=create_app(platform), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://platform", timeout=30) as http:
        story = _Story(platform, http, out, progress, run_id)
        story.result = result
        result.correlation_id = story.story
        steps = (
            story.assets_are_processed,
            story.corrupt_asset_stalls,
            story.licenses_are_sold,
            story.usage_opens_an_investigation,
            story.partner_feed_is_cleaned,
            story.read_models,
            story.the_trace,
        )
        # One client-side span over the story: its HTTP calls, and so every command, carry it.
        with trace.get_tracer("examples.licensing").start_as_current_span("licensing story"):
            for step in steps:
                try:
                    await step()
                except Exception as exc:  # a step that breaks is an outcome not observed, and the story goes on
                    story.expect(f"step {step.__name__} runs to its end", False, f"{type(exc).__name__}: {exc}")
    return result


async def _clean_up(platform: Platform, schema: str | None, broker_url: str, options: dict[str, Any]) -> None:
    """Drop the run's PostgreSQL schema and its broker namespace on a shared server (best effort)."""
    with contextlib.suppress(Exception):
        if schema:
            await platform.store.drop_schema()  # type: ignore[attr-defined]
    scheme = broker_url.split(":", 1)[0].lower()
    with contextlib.suppress(Exception):
        if scheme == "nats" and "stream" in options:
            import nats

            servers = broker_url.split("?", 1)[0]
            client = await nats.connect(servers, connect_timeout=2, max_reconnect_attempts=0)
            try:
                await client.jetstream().delete_stream(options["stream"])
            finally:
                await client.close()
        elif scheme in ("redis", "rediss") and "prefix" in options:
            import redis.asyncio as aioredis

            client = aioredis.from_url(broker_url)
            try:
                keys = [key async for key in client.scan_iter(match=f"{options['prefix']}:*")]
                if keys:
                    await client.delete(*keys)
            finally:
                await client.aclose()


def report(result: ScenarioResult, out: Console) -> None:
    """Print every outcome ✓/✗ and the verdict."""
    out.print(Rule("[bold]expected outcomes[/bold]"))
    for outcome in result.outcomes:
        if outcome.ok:
            out.print(f"[green]✓[/green] {outcome.name}")
        else:
            out.print(f"[red]✗ {outcome.name}[/red]" + (f" — {outcome.detail}" if outcome.detail else ""))
    passed = sum(outcome.ok for outcome in result.outcomes)
    if result.ok:
        out.print(f"[bold green]all {passed} expected outcomes observed[/bold green] in {result.elapsed:.1f} s on {result.database} + {result.broker}")
    else:
        names = "; ".join(outcome.name for outcome in result.failed) or "no outcome was checked"
        out.print(f"[bold red]{len(result.failed)} of {len(result.outcomes)} expected outcomes not observed:[/bold red] {names}")
    if result.correlation_id:
        out.print(f"[dim]the story's correlation id: {result.correlation_id}[/dim]")


def main(database: str | None = None, broker: str | None = None, *, keep: bool = False, otel_file: str | None = None) -> int:
    """Run the scenario and print its report; 0 only if every expected outcome was observed.

    With ``otel_file``, the run is traced and its spans are written there as OTLP JSON lines.
    """
    out = Console()
    provider = None
    if otel_file:
        from tidings.telemetry.otlp_file import trace_to_file

        provider = trace_to_file(otel_file, service_name="examples.licensing")
        trace.set_tracer_provider(provider)
    try:
        result = asyncio.run(run_scenario(database, broker, out=out, keep=keep))
    finally:
        if provider is not None:
            provider.shutdown()  # flushes the last batch of spans to the file
    report(result, out)
    if otel_file:
        out.print(f"[dim]spans written to {otel_file} as OTLP JSON lines[/dim]")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
