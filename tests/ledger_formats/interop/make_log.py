"""Write a static tiled log (and the proofs Bastion computes for it) for sumdb_check.go."""

from __future__ import annotations

import base64
import json
import random
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

import bench_verify
from bastion.ledger import merkle
from bastion.ledger.checkpoint import Checkpoint, sign_checkpoint
from bastion.ledger.cosignature import CosignatureSigner
from bastion.ledger.note import NoteSigner
from bastion.ledger.tiles import TileNodeReader, tile_path


def main(out: Path, n: int) -> None:
    entries = bench_verify.make_entries(n)
    signer = NoteSigner.generate(bench_verify.ORIGIN)
    root = bench_verify.build_log(out, entries, signer)
    witness = CosignatureSigner("witness.example", Ed25519PrivateKey.generate())
    cp = Checkpoint(bench_verify.ORIGIN, n, root)
    note = sign_checkpoint(cp, signer, [witness.cosign(cp.body(), 1_700_000_000)])
    (out / "log" / "checkpoint").write_text(note)

    def fetch(level: int, index: int, width: int) -> bytes:
        return (out / "log" / tile_path(level, index, width)).read_bytes()

    reader = TileNodeReader(n, fetch)
    old = max(1, min(n, n * 2 // 3 + 7))

    def enc(hashes: list[bytes]) -> list[str]:
        return [base64.b64encode(h).decode() for h in hashes]

    picks = {0, 1, 255, 256, n - 1, n // 2, *random.sample(range(n), min(n, 20))}
    spec = {
        "Vkey": signer.vkey,
        "Skey": signer.skey,
        "SignText": "hello, go\n",
        "SignedNote": signer.sign("hello, go\n"),
        "OldSize": old,
        "OldRoot": base64.b64encode(merkle.root(old, reader)).decode(),
        "Consistency": enc(merkle.consistency_proof(old, n, reader)),
        "Inclusion": {str(i): enc(merkle.inclusion_proof(i, n, reader)) for i in picks if i < n},
    }
    (out / "spec.json").write_text(json.dumps(spec))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
