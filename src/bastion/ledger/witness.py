"""A C2SP tlog-witness (https://c2sp.org/tlog-witness): ``POST /add-checkpoint``.

An auditor runs this to hold the custodian's log to a single, append-only history: it cosigns
a checkpoint only if the log's key signed it and it is consistent with the last checkpoint this
witness cosigned for that origin. Status codes follow the spec:

- 400 malformed request (or old size above the checkpoint's size),
- 403 no signature by a known key for the origin verifies,
- 404 unknown origin,
- 409 old size is not the size this witness holds (body: that size, ``text/x.tlog.size``), or
  same size with a different root,
- 422 the consistency proof does not verify,
- 200 one cosignature line (C2SP tlog-cosignature, ``cosignature/v1``).

The check of the old size and the update of the stored checkpoint happen in one transaction
under a per-origin lock, so concurrent requests cannot roll the witness back.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from bastion.clock import Clock, to_unix
from bastion.errors import InputError
from bastion.ledger import merkle
from bastion.ledger.checkpoint import CheckpointError, parse_checkpoint
from bastion.ledger.cosignature import CosignatureSigner
from bastion.ledger.note import KeyFormatError, NoteError, NoteVerifier, open_note, parse_note
from bastion.store import Database

COMPONENT = "witness"
DDL = [
    "CREATE TABLE IF NOT EXISTS witness_logs ("
    " origin TEXT PRIMARY KEY,"
    " tree_size {int} NOT NULL,"
    " root_hash {blob} NOT NULL,"
    " note TEXT NOT NULL,"
    " updated_at TEXT NOT NULL)",
]

MAX_BODY_BYTES = 1 << 20
MAX_PROOF_LINES = 63
TLOG_SIZE_TYPE = "text/x.tlog.size"
TEXT = "text/plain; charset=utf-8"
_OLD_RE = re.compile(r"old (0|[1-9][0-9]{0,18})")


@dataclass(frozen=True)
class WitnessResponse:
    status: int
    body: str
    content_type: str = TEXT


def _reply(status: int, message: str) -> WitnessResponse:
    return WitnessResponse(status, message + "\n")


@dataclass(frozen=True)
class _Request:
    old: int
    proof: list[bytes]
    note: str


def _parse(body: bytes) -> _Request | WitnessResponse:
    if len(body) > MAX_BODY_BYTES:
        return _reply(400, "request body is too large")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return _reply(400, "request body is not UTF-8")
    head, sep, note = text.partition("\n\n")
    if not sep:
        return _reply(400, "request has no empty line before the checkpoint")
    lines = head.split("\n")
    m = _OLD_RE.fullmatch(lines[0])
    if m is None:
        return _reply(400, "first line must be 'old <size>' in canonical decimal")
    if len(lines) - 1 > MAX_PROOF_LINES:
        return _reply(400, f"more than {MAX_PROOF_LINES} consistency proof lines")
    proof: list[bytes] = []
    for i, line in enumerate(lines[1:], start=1):
        try:
            h = base64.b64decode(line.encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError):
            return _reply(400, f"proof line {i} is not base64")
        if len(h) != merkle.HASH_SIZE:
            return _reply(400, f"proof line {i} is not a {merkle.HASH_SIZE}-byte hash")
        proof.append(h)
    return _Request(int(m.group(1)), proof, note)


class Witness:
    """The witness: its cosigning key, the logs it follows, and its state in a database."""

    def __init__(
        self,
        db: Database,
        signer: CosignatureSigner,
        logs: Mapping[str, Sequence[NoteVerifier]],
        clock: Clock,
    ) -> None:
        self.db = db
        self.signer = signer
        self.logs = {origin: list(keys) for origin, keys in logs.items()}
        self.clock = clock
        db.migrate(COMPONENT, DDL)

    @classmethod
    def for_log_vkeys(
        cls, db: Database, signer: CosignatureSigner, vkeys: Sequence[str], clock: Clock
    ) -> Witness:
        """Follow the logs with these vkeys; a log's origin is its key name."""
        logs: dict[str, list[NoteVerifier]] = {}
        for vkey in vkeys:
            try:
                verifier = NoteVerifier.from_vkey(vkey)
            except KeyFormatError as exc:
                raise InputError(f"log vkey {vkey[:60]!r}: {exc}") from None
            logs.setdefault(verifier.name, []).append(verifier)
        return cls(db, signer, logs, clock)

    @property
    def vkey(self) -> str:
        return self.signer.vkey

    def latest(self, origin: str) -> tuple[int, bytes] | None:
        rows = self.db.query(
            "SELECT tree_size, root_hash FROM witness_logs WHERE origin = ?", (origin,)
        )
        return (int(rows[0][0]), bytes(rows[0][1])) if rows else None

    def add_checkpoint(self, body: bytes) -> WitnessResponse:
        parsed = _parse(body)
        if isinstance(parsed, WitnessResponse):
            return parsed
        try:
            text, _ = parse_note(parsed.note)
            cp = parse_checkpoint(text)
        except (NoteError, CheckpointError) as exc:
            return _reply(400, f"malformed checkpoint: {exc}")
        verifiers = self.logs.get(cp.origin)
        if verifiers is None:
            return _reply(404, "unknown log origin")
        try:
            open_note(parsed.note, verifiers)
        except NoteError:
            return _reply(403, "checkpoint is not validly signed by a known key for its origin")
        if parsed.old > cp.size:
            return _reply(400, f"old size {parsed.old} is above the checkpoint size {cp.size}")

        with self.db.transaction(lock=f"witness:{cp.origin}") as cur:
            row = cur.execute(
                "SELECT tree_size, root_hash FROM witness_logs WHERE origin = ?", (cp.origin,)
            ).fetchone()
            held_size, held_root = (int(row[0]), bytes(row[1])) if row else (0, None)
            if parsed.old != held_size:
                return WitnessResponse(409, f"{held_size}\n", TLOG_SIZE_TYPE)
            if parsed.old == cp.size:
                expected = held_root if held_root is not None else merkle.EMPTY_ROOT
                if cp.root_hash != expected:
                    return _reply(409, f"a different root for the size {cp.size} already held")
                if parsed.proof:
                    return _reply(422, "consistency proof between equal sizes must be empty")
            elif parsed.old == 0:
                if parsed.proof:
                    return _reply(422, "consistency proof must be empty when old size is 0")
            else:
                assert held_root is not None
                try:
                    merkle.verify_consistency(
                        parsed.old, cp.size, parsed.proof, held_root, cp.root_hash
                    )
                except merkle.ProofError as exc:
                    return _reply(422, f"consistency proof does not verify: {exc}")
            now = self.clock.now()
            cur.execute(
                "INSERT INTO witness_logs (origin, tree_size, root_hash, note, updated_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (origin) DO UPDATE SET"
                " tree_size = excluded.tree_size, root_hash = excluded.root_hash,"
                " note = excluded.note, updated_at = excluded.updated_at",
                (cp.origin, cp.size, cp.root_hash, parsed.note, now.isoformat()),
            )
        # Persisted above before the cosignature leaves, as the spec requires.
        return WitnessResponse(200, self.signer.cosign(text, to_unix(now)))


def witness_app(witness: Witness) -> FastAPI:
    """The witness's HTTP service (submission and monitoring prefix: the root)."""
    app = FastAPI(
        title="Bastion witness",
        description="C2SP tlog-witness: cosigns checkpoints consistent with what it saw.",
        docs_url=None,
        redoc_url=None,
    )

    @app.post("/add-checkpoint", response_class=PlainTextResponse)
    async def add_checkpoint(request: Request) -> Response:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return PlainTextResponse("request body is too large\n", status_code=400)
        result = await run_in_threadpool(witness.add_checkpoint, bytes(body))
        # Exact Content-Type (no charset added): clients compare text/x.tlog.size literally.
        return Response(
            result.body, status_code=result.status, headers={"Content-Type": result.content_type}
        )

    @app.get("/", response_class=PlainTextResponse)
    def info() -> str:
        origins = "".join(f"log {o}\n" for o in sorted(witness.logs))
        return f"witness {witness.signer.name}\nvkey {witness.vkey}\n{origins}"

    return app
