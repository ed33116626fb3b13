"""What moved, through the OpenTelemetry metrics API: messages sent and consumed, process duration, publish errors.

The relay and the consumers record into these once per batch, and only when an SDK meter
provider is configured (:func:`instruments` is None otherwise, checked once per batch). What
waits in the store (backlog, age, dead letters, lag) is gauged by
:class:`tidings.runtime.flow_gauges.FlowGauges`.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from opentelemetry import metrics
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.metrics._internal import _ProxyMeterProvider  # the API's "no SDK yet" provider

from tidings.telemetry import semconv as sc

if TYPE_CHECKING:
    from tidings.brokers.base import OutgoingMessage

__all__ = ["Instruments", "instruments"]


class Instruments:
    """The counters and histogram the relay and consumers record into (names from the messaging conventions)."""

    def __init__(self, meter: metrics.Meter) -> None:
        self.sent = meter.create_counter(
            "messaging.client.sent.messages", unit="{message}", description="Messages the relay published to the broker"
        )
        self.publish_errors = meter.create_counter(
            "tidings.relay.publish.errors", unit="{message}", description="Publications the broker refused or failed"
        )
        self.consumed = meter.create_counter(
            "messaging.client.consumed.messages", unit="{message}", description="Messages a consumer applied"
        )
        self.process_duration = meter.create_histogram(
            "messaging.process.duration", unit="s", description="Time a consumer's handlers took for one message"
        )

    def count_sent(self, system: str, messages: Sequence[OutgoingMessage], results: Sequence[BaseException | None]) -> None:
        """Count one publish call's outcome per topic."""
        sent: Tally[str] = Tally()
        failed: Tally[str] = Tally()
        for message, result in zip(messages, results, strict=True):
            (sent if result is None else failed)[message.topic] += 1
        for topic, n in sent.items():
            self.sent.add(n, {sc.MESSAGING_SYSTEM: system, sc.MESSAGING_DESTINATION_NAME: topic})
        for topic, n in failed.items():
            self.publish_errors.add(n, {sc.MESSAGING_SYSTEM: system, sc.MESSAGING_DESTINATION_NAME: topic})

    def count_consumed(self, system: str, consumer: str, applied: Iterable[tuple[str, float]]) -> None:
        """Count a committed batch's applied messages ``(topic, seconds)`` and record each one's duration."""
        per_topic: Tally[str] = Tally()
        for topic, seconds in applied:
            per_topic[topic] += 1
            self.process_duration.record(seconds, {
                sc.MESSAGING_SYSTEM: system, sc.MESSAGING_CONSUMER_GROUP_NAME: consumer, sc.MESSAGING_DESTINATION_NAME: topic,
            })
        for topic, n in per_topic.items():
            self.consumed.add(n, {
                sc.MESSAGING_SYSTEM: system, sc.MESSAGING_CONSUMER_GROUP_NAME: consumer, sc.MESSAGING_DESTINATION_NAME: topic,
            })


_provider: object = None
_instruments: Instruments | None = None


def instruments() -> Instruments | None:
    """The instruments of the configured meter provider; None without an SDK (then record nothing)."""
    global _provider, _instruments
    provider = metrics.get_meter_provider()
    if provider is not _provider:
        _provider = provider
        _instruments = None if isinstance(provider, (_ProxyMeterProvider, NoOpMeterProvider)) else Instruments(provider.get_meter("tidings"))
    return _instruments
