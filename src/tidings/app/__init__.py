"""The application layer: command handlers, the unit of work, the in-transaction domain bus, translation."""

from tidings.app.application import DEFAULT_MAX_MESSAGE_BYTES, Application, CommandResult, UnknownCommand
from tidings.messaging.partitioning import DEFAULT_PARTITIONS, partition_of
from tidings.app.repository import Repository, stream_id_of
from tidings.app.unit_of_work import UnitOfWork

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_PARTITIONS",
    "Application",
    "CommandResult",
    "Repository",
    "UnitOfWork",
    "UnknownCommand",
    "partition_of",
    "stream_id_of",
]
