"""Broker topic of each integration event: one topic per contract, shared by all of its versions."""

from __future__ import annotations

__all__ = [
    "ASSET_READY_FOR_SEARCH_TOPIC",
    "ASSET_PROCESSING_STALLED_TOPIC",
    "LICENSE_PURCHASE_CONFIRMED_TOPIC",
    "LICENSE_USAGE_REPORTED_TOPIC",
    "USAGE_VIOLATION_DETECTED_TOPIC",
]

# Topics carry no version: v1 and v2 of a contract travel on the same topic so a consumer sees one
# ordered stream per key and upcasts what is old, instead of subscribing to a topic per version.
# Only [a-z0-9._-] is used, which every broker accepts as is (Kafka is the strictest).
ASSET_READY_FOR_SEARCH_TOPIC = "asset_processing.asset-ready-for-search"
ASSET_PROCESSING_STALLED_TOPIC = "asset_processing.asset-processing-stalled"
LICENSE_PURCHASE_CONFIRMED_TOPIC = "licensing.license-purchase-confirmed"
LICENSE_USAGE_REPORTED_TOPIC = "licensing.license-usage-reported"
USAGE_VIOLATION_DETECTED_TOPIC = "licensing.usage-violation-detected"
