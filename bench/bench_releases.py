"""Benchmark: offline release verification (``verify_release``) of one artifact.

Builds, with the same library code the custodian uses, a release approval entry (SLSA
provenance, a two-reviewer source review and the custodian's VSA, all DSSE/Ed25519), places it
near the end of a 1,000,000-entry RFC 6962 tree, signs the checkpoint as the log and cosigns it
with 3 witnesses (quorum 2), and gives the client a state at an older tree size so that every
run also checks a consistency proof. Each timed run is the whole client check from parsed JSON:
bundle validation and expiry, SHA-256 of the artifact, entry decoding, tlog-proof (log
signature, cosignatures, inclusion), consistency, VSA, provenance and review (6 Ed25519
verifications in all, more with the quorum), for several artifact sizes.

Baseline, same run: SHA-256 of the same artifact plus one Ed25519 verification.
Prints one JSON summary. Usage: ``python bench/bench_releases.py [--entries N] [--runs R]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.clock import iso
from bastion.events import Actor, ReleaseApproval, encode_event
from bastion.ledger.checkpoint import Checkpoint, sign_checkpoint
from bastion.ledger.cosignature import CosignatureSigner
from bastion.ledger.merkle import consistency_proof, inclusion_proof, leaf_hash, node_hash
from bastion.ledger.merkle import root as merkle_root
from bastion.ledger.note import NoteSigner
from bastion.ledger.tlogproof import build_proof
from bastion.releases.bundle import CustodianTrust, LogTrust, TrustBundle, WitnessTrust
from bastion.releases.dsse import public_key_to_b64, sign_envelope
from bastion.releases.intoto import PAYLOAD_TYPE
from bastion.releases.policy import KeyHolder, ReleasePolicy, RepositoryRule
from bastion.releases.provenance import provenance_statement
from bastion.releases.review import ReviewerRef, ReviewPredicate, ReviewRange, review_statement
from bastion.releases.verify import (
    ConsistencyProof,
    Evidence,
    MemoryState,
    TrustedHead,
    verify_release,
)
from bastion.releases.vsa import vsa_statement

ORIGIN = "bench.example/log"
NOW = datetime(2026, 3, 1, tzinfo=UTC)
COMMIT = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"


def holder(identity: str, key: Ed25519PrivateKey) -> KeyHolder:
    return KeyHolder(id=identity, public_key=public_key_to_b64(key.public_key()))


class Tree:
    """Every perfect-subtree hash of an RFC 6962 tree, level by level."""

    def __init__(self, leaves: list[bytes]) -> None:
        self.levels = [leaves]
        while len(self.levels[-1]) > 1:
            below = self.levels[-1]
            self.levels.append(
                [node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
            )

    def node(self, level: int, index: int) -> bytes:
        return self.levels[level][index]

    def root(self, size: int) -> bytes:
        return merkle_root(size, self.node)


def build_release(
    artifact: bytes, keys: dict[str, Ed25519PrivateKey], policy: ReleasePolicy
) -> bytes:
    sha = hashlib.sha256(artifact).hexdigest()
    prov = sign_envelope(
        PAYLOAD_TYPE,
        provenance_statement(
            artifact_name="app.apk",
            artifact_sha256=sha,
            repository_uri="https://git.example/app",
            commit=COMMIT,
            command=["./gradlew", "assembleRelease"],
            output="app/build/outputs/apk/release/app.apk",
            builder_id="https://ci.example/builder",
            invocation_id="bench",
            started_on="2026-02-01T00:00:00Z",
            finished_on="2026-02-01T00:10:00Z",
        ).to_payload(),
        [keys["builder"]],
    )
    review = sign_envelope(
        PAYLOAD_TYPE,
        review_statement(
            ReviewPredicate(
                repository="app",
                commit=COMMIT,
                range=ReviewRange(base="1" * 40, head=COMMIT),
                commits=12,
                authors=["dev@example.com"],
                reviewers=[ReviewerRef(id="alice@example.com"), ReviewerRef(id="bob@example.com")],
                verdict="approve",
                scope="full diff",
                notes="",
                reviewedAt="2026-02-01T00:00:00Z",
            )
        ).to_payload(),
        [keys["alice"], keys["bob"]],
    )
    inputs = {"provenance": prov, "review": review}
    vsa = sign_envelope(
        PAYLOAD_TYPE,
        vsa_statement(
            artifact_name="app.apk",
            artifact_sha256=sha,
            verifier_id="urn:bastion:custodian:" + ORIGIN,
            time_verified="2026-02-01T00:20:00Z",
            app="com.example.app",
            channel="stable",
            policy=policy,
            inputs=inputs,
            verified_levels=policy.verified_levels,
        ).to_payload(),
        [keys["custodian"]],
    )
    return encode_event(
        ReleaseApproval(
            actor=Actor(id="custodian"),
            reason="bench",
            at="2026-02-01T00:20:00Z",
            artifact_sha256=sha,
            app="com.example.app",
            channel="stable",
            vsa_envelope_sha256=vsa.sha256(),
            envelope=vsa.to_json(),
            attestations={k: v.to_json() for k, v in inputs.items()},
        )
    )


def percentile(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[int(q) - 1]


def interleaved(fns: dict[str, Any], runs: int) -> dict[str, dict[str, list[float]]]:
    """Time each function ``runs`` times, rotating the order every round, so that load from
    other processes on a shared machine falls on the candidates and the baseline alike.

    Records wall time and this thread's CPU time: on a busy machine the wall time includes
    waiting for a core, the CPU time does not."""
    names = list(fns)
    for name in names:
        fns[name]()  # warm up
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for r in range(runs):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            c0, t0 = time.thread_time(), time.perf_counter()
            fns[name]()
            wall[name].append((time.perf_counter() - t0) * 1000)
            cpu[name].append((time.thread_time() - c0) * 1000)
    return {"wall": wall, "cpu": cpu}


def measure(
    size: int,
    keys: dict[str, Ed25519PrivateKey],
    policy: ReleasePolicy,
    bundle: dict[str, Any],
    log_signer: NoteSigner,
    witnesses: list[CosignatureSigner],
    leaves: list[bytes],
    runs: int,
) -> dict[str, Any]:
    n = len(leaves)
    old_size, index = n - n // 20, n - n // 1000
    artifact = os.urandom(size)
    entry = build_release(artifact, keys, policy)
    leaves = list(leaves)
    leaves[index] = leaf_hash(entry)
    tree = Tree(leaves)
    cp = Checkpoint(ORIGIN, n, tree.root(n))
    note = sign_checkpoint(cp, log_signer) + "".join(
        w.cosign(cp.body(), 1_770_000_000) for w in witnesses
    )
    proof = build_proof(entry, index, inclusion_proof(index, n, tree.node), note)
    consistency = ConsistencyProof(old_size, n, tuple(consistency_proof(old_size, n, tree.node)))
    # The client receives JSON: time the check from the parsed document, as an app would.
    evidence = json.loads(json.dumps(Evidence(entry, proof, (consistency,)).to_json()))
    old_head = TrustedHead(old_size, tree.root(old_size))

    def verify() -> None:
        state = MemoryState()
        state.heads[ORIGIN] = old_head
        result = verify_release(
            artifact, evidence, bundle, state, app="com.example.app", channel="stable", now=NOW
        )
        if not result.ok:
            raise SystemExit(f"verification failed: {result.to_json()}")

    message = b"x" * 1000
    sig = keys["custodian"].sign(message)
    pub = keys["custodian"].public_key()

    def baseline() -> None:
        hashlib.sha256(artifact).digest()
        pub.verify(sig, message)

    def bare_sha() -> None:
        hashlib.sha256(artifact).digest()

    runs = max(10, runs if size <= 16 << 20 else runs // 3)
    t = interleaved({"verify": verify, "baseline": baseline, "sha256": bare_sha}, runs)
    wall = {k: statistics.median(v) for k, v in t["wall"].items()}
    cpu = {k: statistics.median(v) for k, v in t["cpu"].items()}
    return {
        "runs": runs,
        "verify_p50_ms": round(wall["verify"], 2),
        "verify_p95_ms": round(percentile(t["wall"]["verify"], 95), 2),
        "baseline_p50_ms": round(wall["baseline"], 2),
        "ratio_to_baseline": round(wall["verify"] / wall["baseline"], 2),
        "verify_cpu_p50_ms": round(cpu["verify"], 2),
        "baseline_cpu_p50_ms": round(cpu["baseline"], 2),
        "cpu_ratio_to_baseline": round(cpu["verify"] / cpu["baseline"], 2),
        # What the check costs beyond hashing the artifact (independent of its size).
        "overhead_cpu_p50_ms": round(cpu["verify"] - cpu["sha256"], 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--sizes-mib", default="1,10,50")
    args = ap.parse_args()

    keys = {n: Ed25519PrivateKey.generate() for n in ("alice", "bob", "builder", "custodian")}
    policy = ReleasePolicy(
        repositories=[RepositoryRule(name="app", uri="https://git.example/app")],
        reviewers=[
            holder("alice@example.com", keys["alice"]),
            holder("bob@example.com", keys["bob"]),
        ],
        builders=[holder("https://ci.example/builder", keys["builder"])],
    )
    log_signer = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
    witnesses = [CosignatureSigner(f"w{i}.example", Ed25519PrivateKey.generate()) for i in range(3)]
    bundle = TrustBundle(
        issued_at=iso(NOW - timedelta(days=30)),
        expires_at=iso(NOW + timedelta(days=60)),
        custodian=CustodianTrust(
            verifier_id="urn:bastion:custodian:" + ORIGIN,
            keys=[holder("custodian", keys["custodian"])],
        ),
        log=LogTrust(origin=ORIGIN, vkey=log_signer.vkey),
        witnesses=WitnessTrust(vkeys=[w.vkey for w in witnesses], quorum=2),
        policy=policy,
    ).to_json()

    n = args.entries
    leaves = [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(n)]
    results = {
        f"{mib}MiB": measure(
            mib << 20, keys, policy, bundle, log_signer, witnesses, leaves, args.runs
        )
        for mib in (int(s) for s in args.sizes_mib.split(","))
    }
    print(
        json.dumps(
            {
                "benchmark": "release verification (offline, one artifact)",
                "log_entries": n,
                "witness_quorum": "2 of 3",
                "python": platform.python_version(),
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
