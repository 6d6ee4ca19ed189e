"""Checkpoint publishing: sign the tree head, collect witness cosignatures, store both.

The publisher never signs a tree that is inconsistent with the last checkpoint it signed: it
checks an RFC 9162 consistency proof built from the stored tiles first, so tampering with the
stored history stops publication instead of producing a second, forked, signed view.

Witnesses are asked through the C2SP tlog-witness ``add-checkpoint`` protocol. The returned
cosignatures are kept only if they verify under the witness keys this log was configured with
(unknown keys are ignored, as the spec requires).
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from bastion.clock import Clock, iso
from bastion.errors import BastionError, ConfigError, IntegrityError
from bastion.ledger import merkle
from bastion.ledger.checkpoint import Checkpoint, sign_checkpoint
from bastion.ledger.cosignature import CosignatureVerifier
from bastion.ledger.log_storage import LogStorage, StoredCheckpoint
from bastion.ledger.note import KeyFormatError, NoteError, NoteSigner, open_note

log = logging.getLogger(__name__)

TLOG_SIZE_TYPE = "text/x.tlog.size"


class WitnessError(BastionError):
    """A witness refused the checkpoint or was unreachable; the checkpoint stays uncosigned."""


@dataclass(frozen=True)
class WitnessEndpoint:
    """A witness this log submits to: its add-checkpoint URL prefix and its cosignature vkey."""

    url: str
    verifier: CosignatureVerifier

    @property
    def name(self) -> str:
        return self.verifier.name

    @classmethod
    def parse(cls, spec: str) -> WitnessEndpoint:
        """``"<URL> <cosignature vkey>"`` (either order), as listed in ``ledger.witnesses``."""
        parts = spec.split()
        urls = [p for p in parts if p.startswith(("http://", "https://"))]
        keys = [p for p in parts if not p.startswith(("http://", "https://"))]
        if len(urls) != 1 or len(keys) != 1:
            raise ConfigError(
                f"ledger.witnesses entry {spec!r} must be '<URL> <witness vkey>': the log needs"
                " the witness's key to check its cosignatures"
            )
        try:
            verifier = CosignatureVerifier.from_vkey(keys[0])
        except KeyFormatError as exc:
            raise ConfigError(f"ledger.witnesses entry {urls[0]}: {exc}") from None
        return cls(urls[0].rstrip("/"), verifier)


ProofFor = Callable[[int, int], list[bytes]]
"""(old size, new size) -> consistency proof hashes."""


class WitnessClient:
    """Submits checkpoints to one witness, remembering the size it last cosigned."""

    def __init__(self, endpoint: WitnessEndpoint, http: httpx.Client) -> None:
        self.endpoint = endpoint
        self._http = http
        self.known_size = 0  # 0 until the witness tells us otherwise (a 409 does)

    def cosign(self, note: str, cp: Checkpoint, proof_for: ProofFor) -> str:
        """Return the witness's verified cosignature line(s) for the signed checkpoint `note`."""
        url = self.endpoint.url + "/add-checkpoint"
        for _attempt in range(3):
            old = self.known_size
            if old > cp.size:
                raise WitnessError(
                    f"witness {self.endpoint.name} already cosigned size {old} > {cp.size}"
                )
            proof = proof_for(old, cp.size) if 0 < old < cp.size else []
            body = (
                f"old {old}\n"
                + "".join(base64.b64encode(h).decode() + "\n" for h in proof)
                + "\n"
                + note
            )
            try:
                resp = self._http.post(url, content=body.encode())
            except httpx.HTTPError as exc:
                raise WitnessError(
                    f"witness {self.endpoint.name} at {url} unreachable: {type(exc).__name__}"
                ) from None
            if resp.status_code == 409 and resp.headers.get("content-type", "").startswith(
                TLOG_SIZE_TYPE
            ):
                try:
                    self.known_size = int(resp.text.strip())
                except ValueError:
                    raise WitnessError(
                        f"witness {self.endpoint.name} sent a malformed 409 size"
                    ) from None
                continue
            if resp.status_code != 200:
                raise WitnessError(
                    f"witness {self.endpoint.name} refused size {cp.size}: HTTP {resp.status_code}"
                )
            lines = self._verified_lines(note, resp.text)
            self.known_size = cp.size
            return lines
        raise WitnessError(f"witness {self.endpoint.name} kept answering 409 Conflict")

    def _verified_lines(self, note: str, response: str) -> str:
        """Keep the response's lines that verify under this witness's key; refuse otherwise."""
        if not response.endswith("\n") or not all(
            line.startswith("— ") for line in response[:-1].split("\n")
        ):
            raise WitnessError(f"witness {self.endpoint.name} sent a malformed response")
        try:
            opened = open_note(note + response, [self.endpoint.verifier])
        except NoteError as exc:
            raise WitnessError(f"witness {self.endpoint.name}: {exc}") from None
        mine = {(s.name, s.key_id) for s in opened.verified}
        return "".join(line + "\n" for line in response[:-1].split("\n") if _line_key(line) in mine)


def _line_key(line: str) -> tuple[str, int]:
    name, _, b64 = line[2:].partition(" ")
    try:
        return name, int.from_bytes(base64.b64decode(b64)[:4], "big")
    except ValueError:
        return name, -1


class Publisher:
    """Signs and stores checkpoints; optionally in the background after each commit."""

    def __init__(
        self,
        storage: LogStorage,
        signer: NoteSigner,
        clock: Clock,
        *,
        node_reader: Callable[[int], merkle.NodeReader],
        witnesses: Sequence[WitnessEndpoint] = (),
        interval: float = 0.5,
        poll: float = 2.0,
        witness_timeout: float = 10.0,
    ) -> None:
        self.storage = storage
        self.signer = signer
        self.clock = clock
        self._node_reader = node_reader
        self.interval = interval
        self.poll = poll
        self._http = httpx.Client(timeout=witness_timeout) if witnesses else None
        self._witnesses = [WitnessClient(w, self._http) for w in witnesses if self._http]
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one publication at a time in this process
        self.last_error: str | None = None

    @property
    def origin(self) -> str:
        return self.signer.name

    # --- publishing ----------------------------------------------------------------------------

    def publish(self) -> StoredCheckpoint:
        """Sign the current tree (if it grew) and gather cosignatures; return what is stored."""
        with self._lock:
            return self._publish()

    def _publish(self) -> StoredCheckpoint:
        latest = self.storage.latest_checkpoint()
        size = self.storage.tree_size()
        if latest is not None and latest.tree_size > size:
            raise IntegrityError(
                f"stored tree size {size} is below the signed checkpoint size {latest.tree_size}"
            )
        if latest is not None and latest.tree_size == size:
            if self._witnesses and latest.witnesses < len(self._witnesses):
                return self._cosign(latest)
            return latest
        node = self._node_reader(size)
        root_hash = merkle.root(size, node)
        if latest is not None and latest.tree_size > 0:
            proof = merkle.consistency_proof(latest.tree_size, size, node)
            try:
                merkle.verify_consistency(
                    latest.tree_size, size, proof, latest.root_hash, root_hash
                )
            except merkle.ProofError as exc:
                raise IntegrityError(
                    f"refusing to sign size {size}: the stored tree is not consistent with the "
                    f"signed checkpoint of size {latest.tree_size} ({exc})"
                ) from None
        note = sign_checkpoint(Checkpoint(self.origin, size, root_hash), self.signer)
        stored = StoredCheckpoint(size, root_hash, note, "", 0, iso(self.clock.now()))
        newest = self.storage.store_checkpoint(stored)
        if newest is not stored:
            return newest  # another process published meanwhile
        return self._cosign(stored) if self._witnesses else stored

    def _cosign(self, cp: StoredCheckpoint) -> StoredCheckpoint:
        """Ask every witness in parallel; store whatever valid cosignatures came back."""
        checkpoint = Checkpoint(self.origin, cp.tree_size, cp.root_hash)

        def proof_for(old: int, new: int) -> list[bytes]:
            return merkle.consistency_proof(old, new, self._node_reader(new))

        def ask(client: WitnessClient) -> str:
            try:
                return client.cosign(cp.note, checkpoint, proof_for)
            except BastionError as exc:
                log.warning("%s", exc)
                self.last_error = str(exc)
                return ""

        with ThreadPoolExecutor(max(1, len(self._witnesses))) as pool:
            lines = list(pool.map(ask, self._witnesses))
        cosignatures = "".join(lines)
        count = sum(1 for part in lines if part)
        if count > cp.witnesses:
            self.storage.record_cosignatures(cp.tree_size, cosignatures, count)
            return StoredCheckpoint(
                cp.tree_size, cp.root_hash, cp.note, cosignatures, count, cp.created_at
            )
        return cp

    # --- background ----------------------------------------------------------------------------

    def notify(self, size: int = 0) -> None:
        """The sequencer committed: publish soon (within `interval`)."""
        self._wake.set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ledger-publisher", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll)
            # Let a burst of commits accumulate into one checkpoint.
            if self._stop.wait(self.interval):
                break
            self._wake.clear()
            try:
                self.publish()
                self.last_error = None
            except Exception as exc:  # keep publishing later; appends are unaffected
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error("checkpoint publication failed: %s", self.last_error)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        if self._http is not None:
            self._http.close()
