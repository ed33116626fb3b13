"""Change data capture from PostgreSQL: a legacy table's row changes become integration events of our contract.

``ChangeCapture`` holds the anti-corruption translators; ``SlotReader`` reads a logical slot by
SQL; ``CdcRunner`` commits each source transaction's events with its checkpoint, then advances
the slot (docs/decisions/0021). CLI: ``tidings cdc run | status | drop``.
"""

from tidings.cdc.capture import CdcCheckpoint, CdcRunner, ChangeCapture, Drop, Publish, UnreadableRow, change_event_id
from tidings.cdc.source import CdcConfigurationError, RowChange, SlotReader, SlotStatus, SourceTransaction

__all__ = [
    "CdcCheckpoint",
    "CdcConfigurationError",
    "CdcRunner",
    "ChangeCapture",
    "Drop",
    "Publish",
    "RowChange",
    "SlotReader",
    "SlotStatus",
    "SourceTransaction",
    "UnreadableRow",
    "change_event_id",
]
