"""Loading flows: the administrator's recorded action that puts a declaration in force.

``FlowLoader.load`` parses a flow file, reviews every flow in it (``checks``), and then,
all or nothing:

* if any flow is refused, appends one ``egress.flow`` entry (step ``refused``, with its
  reasons) per refused flow and raises ``FlowRefused``: nothing is loaded, not even the
  flows of the file that passed;
* else appends one ``egress.flow`` entry (step ``loaded``) per new or changed flow, in one
  commit whose side write stores the versions: a flow is in force exactly when its entry is
  in the log. A flow already in force with the same digest is left as it is.

A flow's version must grow with every change of its declaration: the same version with
another digest is refused, so a declaration cannot change under a version a recipient has
already seen. The runner re-reads the stored declaration and checks its digest against its
``egress.flow`` entry before every run (``runner.verify_loaded``): a declaration edited in
the database, without this action, does not run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from bastion.catalog import Catalog
from bastion.clock import Clock, iso
from bastion.egress.checks import BulkContext, Refusal, Review, review
from bastion.egress.model import Flow, parse_flows
from bastion.egress.store import EgressStore
from bastion.errors import InputError
from bastion.events import Actor, EgressFlowChange, encode_event
from bastion.ledger.api import LedgerWriter
from bastion.policy.engine import PolicyEngine
from bastion.store import Cursor


class FlowRefused(InputError):
    """A flow failed its checks; the refusal is recorded and nothing was loaded."""

    def __init__(self, refused: dict[str, Review]) -> None:
        self.refused = refused
        parts = [
            f"flow {name!r}: " + "; ".join(_line(r) for r in rv.refusals)
            for name, rv in refused.items()
        ]
        super().__init__("refused: " + " | ".join(parts))

    def detail_json(self) -> dict[str, Any]:
        """Each refused flow's refusals (code, field, message): the CLI's ``--json`` detail."""
        return {
            name: [r.to_json() for r in rv.refusals] for name, rv in sorted(self.refused.items())
        }


def _line(r: Refusal) -> str:
    where = f" ({r.field})" if r.field else ""
    return f"{r.code}{where}: {r.message}"


@dataclass(frozen=True)
class LoadResult:
    loaded: list[str]
    unchanged: list[str]
    indexes: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {"loaded": self.loaded, "unchanged": self.unchanged, "ledger": self.indexes}


def flow_event(
    flow: Flow,
    step: Literal["loaded", "refused", "retired", "run-refused"],
    actor: Actor,
    reason: str,
    at: str,
    rv: Review | None = None,
) -> EgressFlowChange:
    """The ``egress.flow`` entry of a load, a refusal, a retirement or a refused run."""
    return EgressFlowChange(
        actor=actor,
        reason=reason,
        at=at,
        flow=flow.name,
        version=flow.version,
        flow_sha256=flow.sha256(),
        step=step,
        recipient=flow.recipient.id,
        recipient_employer=flow.recipient.employer,
        recipient_country=flow.recipient.employer_country,
        dataset=flow.source.dataset,
        kind=flow.kind,
        fields=sorted(flow.fields),
        restricted_transaction=flow.restricted_transaction is not None,
        reasons=rv.codes if rv else [],
        policies=list(rv.policies) if rv else [],
        policy_sha256=rv.policy_sha256 if rv else None,
    )


class FlowLoader:
    def __init__(
        self,
        store: EgressStore,
        ledger: LedgerWriter,
        catalog: Catalog,
        engine: Callable[[], PolicyEngine],
        bulk: Callable[[Flow], BulkContext],
        clock: Clock,
        *,
        public_reason: Callable[[str], str] = lambda text: text,
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.catalog = catalog
        self.engine = engine
        self.bulk = bulk
        self.clock = clock
        self.public_reason = public_reason

    def load(self, text: str | bytes, *, source: str, actor: Actor, reason: str) -> LoadResult:
        if not reason.strip():
            raise InputError("loading a flow needs a reason", field="--reason")
        flows = parse_flows(text, source=source)
        engine = self.engine()
        known = {s.name for s in self.store.states()} | {f.name for f in flows}
        reviews = {
            f.name: review(f, self.catalog, engine, bulk=self.bulk(f), known_flows=known)
            for f in flows
        }
        for flow in flows:
            self._check_version(flow, reviews)
        at = iso(self.clock.now())
        public = self.public_reason(reason.strip())
        refused = {name: rv for name, rv in reviews.items() if not rv.ok}
        if refused:
            events = [
                flow_event(f, "refused", actor, public, at, reviews[f.name])
                for f in flows
                if f.name in refused
            ]
            self.ledger.append_many(events)
            raise FlowRefused(refused)
        changed = [f for f in flows if not self._unchanged(f)]
        unchanged = [f.name for f in flows if f not in changed]
        if not changed:
            return LoadResult([], unchanged, {})
        entries = [
            encode_event(flow_event(f, "loaded", actor, public, at, reviews[f.name]))
            for f in changed
        ]

        def side_write(cur: Cursor) -> None:
            # The entry's index is known only once it commits: it is stored just after. A
            # crash in between leaves -1, and the runner refuses such a flow until it is
            # loaded again (fail closed; see runner.verify_loaded).
            for flow in changed:
                self.store.add_version(
                    cur, flow, actor_id=actor.id, reason=reason.strip(), at=at, ledger_index=-1
                )

        receipts = self.ledger.append_entries(entries, side_write=side_write)
        indexes = {f.name: r.index for f, r in zip(changed, receipts, strict=True)}
        for flow in changed:
            self.store.set_index(flow.name, flow.version, indexes[flow.name])
        return LoadResult([f.name for f in changed], unchanged, indexes)

    def _check_version(self, flow: Flow, reviews: dict[str, Review]) -> None:
        stored = self.store.stored(flow.name, flow.version)
        if stored is not None and stored.sha256 != flow.sha256():
            raise InputError(
                f"flow {flow.name!r} version {flow.version} is already loaded with another "
                "declaration: give the change a new version",
                field="version",
            )
        latest = self.store.latest_version(flow.name)
        if stored is None and flow.version < latest:
            raise InputError(
                f"flow {flow.name!r}: version {flow.version} is older than the loaded "
                f"version {latest}",
                field="version",
            )

    def _unchanged(self, flow: Flow) -> bool:
        state = self.store.state(flow.name)
        stored = self.store.stored(flow.name, flow.version)
        return (
            state is not None
            and state.status == "active"
            and state.version == flow.version
            and stored is not None
        )

    def retire(self, name: str, *, actor: Actor, reason: str) -> int:
        """Stop a flow: no run after this (its entry says so); its history stays."""
        stored = self.store.stored(name)
        if stored is None:
            raise InputError(f"no flow named {name!r} is loaded")
        event = flow_event(
            stored.flow, "retired", actor, self.public_reason(reason), iso(self.clock.now())
        )
        (receipt,) = self.ledger.append_entries(
            [encode_event(event)], side_write=lambda cur: self.store.retire_in(cur, name)
        )
        return receipt.index
