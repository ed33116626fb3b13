"""Processes: the relay now; consumer workers, projector, saga runner and scheduler next."""

from tidings.runtime.relay import Relay, RelayRound

__all__ = ["Relay", "RelayRound"]
