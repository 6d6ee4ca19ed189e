"""Where a flow's deliveries go: a directory (the embedded default), a NATS JetStream stream,
an HTTP endpoint of the recipient. ``destination_from_config`` builds one from a flow's
``destination`` mapping; the NATS one needs the ``egress`` extra (nats-py)."""

from bastion.egress.destinations.base import (
    Destination,
    DestinationUnavailable,
    destination_from_config,
    parse_config,
)
from bastion.egress.destinations.files import DirectoryDestination

__all__ = [
    "Destination",
    "DestinationUnavailable",
    "DirectoryDestination",
    "destination_from_config",
    "parse_config",
]
