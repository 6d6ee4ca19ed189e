"""What an offline verifier must trust about a log: its origin and signed-note vkey, the
witnesses' cosignature vkeys and the quorum. Every trust bundle (release, egress) takes these
from the running log through ``log_anchors``, so they are read one way. Pure, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class _NamedKey(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def vkey(self) -> str: ...


class _Witness(Protocol):
    @property
    def verifier(self) -> _NamedKey: ...


class AnchoredLog(Protocol):
    """What ``bastion.ledger.log.Log`` exposes about its identity (and any stand-in does)."""

    @property
    def origin(self) -> str: ...

    @property
    def vkey(self) -> str: ...

    @property
    def witnesses(self) -> Sequence[_Witness]: ...

    @property
    def quorum(self) -> int: ...


@dataclass(frozen=True)
class WitnessAnchor:
    name: str
    vkey: str
    """The witness's C2SP ``cosignature/v1`` verifier key."""


@dataclass(frozen=True)
class LogAnchors:
    origin: str
    vkey: str
    """The log's C2SP signed-note verifier key (``name+hash+base64``)."""
    witnesses: tuple[WitnessAnchor, ...]
    quorum: int
    """Distinct witness cosignatures a checkpoint must carry."""


def log_anchors(log: AnchoredLog) -> LogAnchors:
    return LogAnchors(
        origin=log.origin,
        vkey=log.vkey,
        witnesses=tuple(WitnessAnchor(w.verifier.name, w.verifier.vkey) for w in log.witnesses),
        quorum=log.quorum,
    )
