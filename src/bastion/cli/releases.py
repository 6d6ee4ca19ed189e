"""``bastion releases``: reviews, builds, approvals, evidence, trust bundles, verification.

Where things live: the release policy in ``$BASTION_HOME/releases/policy.json``; reviews and
approvals in the database (tables ``releases_*``); approvals in the ledger. ``verify`` needs no
home at all: only the artifact, the trust bundle and the evidence.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from bastion.cli.common import (
    HOME_OPTION,
    JSON_OPTION,
    console,
    emit_json,
    read_input_file,
    reported_errors,
)
from bastion.cli.groups import releases_app
from bastion.clock import SystemClock
from bastion.errors import InputError
from bastion.home import Home
from bastion.releases import files
from bastion.releases.dsse import key_id, parse_envelope, public_key_from_b64, public_key_to_b64
from bastion.releases.errors import ReleaseRejected
from bastion.releases.policy import KeyHolder, ReleasePolicy, RepositoryRule
from bastion.store import Database

if TYPE_CHECKING:
    from bastion.ledger.log import Log


def register(app: typer.Typer) -> None:
    """The commands hang off ``releases_app`` (mounted by main); nothing else to add."""


def _home(home: Path | None) -> Home:
    return Home.load(home)


def _public_key_arg(public_key: str | None, key_file: Path | None) -> str:
    if (public_key is None) == (key_file is None):
        raise InputError("give exactly one of --public-key or --key-file")
    if key_file is not None:
        return public_key_to_b64(files.load_key_file(key_file).public_key())
    assert public_key is not None
    try:
        return public_key_to_b64(public_key_from_b64(public_key.strip()))
    except ReleaseRejected as exc:
        raise InputError(exc.detail, field="--public-key") from None


# --- keys and policy ---------------------------------------------------------------------


@releases_app.command("keygen")
def keygen(
    out: Path = typer.Argument(..., help="Where to write the new PEM private key (mode 0600)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Create an Ed25519 key for a reviewer or builder; prints its public key."""
    with reported_errors(as_json):
        key = files.create_key_file(out)
        info = {
            "file": str(out),
            "public_key": public_key_to_b64(key.public_key()),
            "key_id": key_id(key.public_key()),
        }
        if as_json:
            emit_json({"ok": True, **info})
        else:
            console.print(f"Wrote {out}\npublic key: [bold]{info['public_key']}[/]")


def _update_policy(home: Path | None, change: Any) -> tuple[Path, ReleasePolicy]:
    h = _home(home)
    policy = change(files.load_policy(h.path))
    try:
        validated = ReleasePolicy.model_validate(policy.model_dump())
    except ValueError as exc:
        raise InputError(f"the policy would be invalid: {exc}") from None
    return files.save_policy(h.path, validated), validated


def _replace(items: list[Any], new: Any, key: str) -> list[Any]:
    return [i for i in items if getattr(i, key) != getattr(new, key)] + [new]


@releases_app.command("repo-add")
def repo_add(
    name: str = typer.Argument(..., help="Repository name used in reviews."),
    uri: str = typer.Option(..., "--uri", help="Canonical URI, as builders name it."),
    required_reviewers: int = typer.Option(2, "--required-reviewers", min=1, max=16),
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Add (or update) a repository and its required number of distinct reviewers."""
    with reported_errors(as_json):
        rule = RepositoryRule(name=name, uri=uri, required_reviewers=required_reviewers)
        path, policy = _update_policy(
            home,
            lambda p: p.model_copy(
                update={"repositories": _replace(list(p.repositories), rule, "name")}
            ),
        )
        _report_policy(path, policy, as_json)


@releases_app.command("reviewer-add")
def reviewer_add(
    reviewer_id: str = typer.Argument(..., help="Reviewer id, normally their e-mail."),
    public_key: str | None = typer.Option(None, "--public-key", help="Base64 Ed25519 key."),
    key_file: Path | None = typer.Option(None, "--key-file", help="Or their PEM key file."),
    email: list[str] = typer.Option([], "--email", help="Other addresses they commit under."),
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Trust a reviewer's key."""
    with reported_errors(as_json):
        holder = KeyHolder(
            id=reviewer_id, public_key=_public_key_arg(public_key, key_file), emails=email
        )
        path, policy = _update_policy(
            home,
            lambda p: p.model_copy(update={"reviewers": _replace(list(p.reviewers), holder, "id")}),
        )
        _report_policy(path, policy, as_json)


@releases_app.command("builder-add")
def builder_add(
    builder_id: str = typer.Argument(..., help="Builder id (URI) it writes in provenance."),
    public_key: str | None = typer.Option(None, "--public-key", help="Base64 Ed25519 key."),
    key_file: Path | None = typer.Option(None, "--key-file", help="Or its PEM key file."),
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Allow a builder and trust its provenance-signing key."""
    with reported_errors(as_json):
        holder = KeyHolder(id=builder_id, public_key=_public_key_arg(public_key, key_file))
        path, policy = _update_policy(
            home,
            lambda p: p.model_copy(update={"builders": _replace(list(p.builders), holder, "id")}),
        )
        _report_policy(path, policy, as_json)


def _report_policy(path: Path, policy: ReleasePolicy, as_json: bool) -> None:
    if as_json:
        emit_json({"ok": True, "file": str(path), "digest": policy.digest(), **policy.model_dump()})
        return
    table = Table(title=f"Release policy {policy.digest()[:16]}…")
    for col in ("kind", "id", "detail"):
        table.add_column(col)
    for r in policy.repositories:
        table.add_row("repository", r.name, f"{r.uri}, {r.required_reviewers} reviewers")
    for rv in policy.reviewers:
        table.add_row("reviewer", rv.id, rv.public_key)
    for b in policy.builders:
        table.add_row("builder", b.id, b.public_key)
    for t in policy.build_types:
        table.add_row("build type", t.uri, ", ".join(t.external_parameters))
    console.print(table)


@releases_app.command("policy")
def policy_show(home: Path | None = HOME_OPTION, as_json: bool = JSON_OPTION) -> None:
    """Show the release policy and its digest (what VSAs name)."""
    with reported_errors(as_json):
        h = _home(home)
        _report_policy(files.policy_path(h.path), files.load_policy(h.path), as_json)


# --- reviews and builds --------------------------------------------------------------------


@releases_app.command("review")
def review_cmd(
    repo: Path = typer.Option(..., "--repo", help="Path of the git repository."),
    commit: str = typer.Option(..., "--commit", help="The commit (or revision) reviewed."),
    reviewer_key: list[Path] = typer.Option(
        ..., "--reviewer-key", help="A reviewer's PEM key; repeat, in the order of --reviewer."
    ),
    reviewer: list[str] = typer.Option(..., "--reviewer", help="A reviewer id; repeat."),
    verdict: str = typer.Option("approve", "--verdict", help="approve or reject."),
    scope: str = typer.Option(..., "--scope", help="What was reviewed."),
    notes: str = typer.Option("", "--notes", help="Findings, caveats."),
    name: str | None = typer.Option(
        None, "--name", help="Repository name in policy (default: the directory name)."
    ),
    out: Path | None = typer.Option(None, "--out", help="Also write the DSSE envelope here."),
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Record a signed source review of COMMIT covering the changes since the last review."""
    with reported_errors(as_json):
        from bastion.releases.reviewing import initialize_releases, record_review
        from bastion.wiring import open_store

        if len(reviewer_key) != len(reviewer):
            raise InputError("give one --reviewer-key per --reviewer, in the same order")
        h = _home(home)
        reviewers = [
            (rid, files.load_key_file(k)) for rid, k in zip(reviewer, reviewer_key, strict=True)
        ]
        db = open_store(h)
        try:
            initialize_releases(db)
            rec = record_review(
                db,
                files.load_policy(h.path),
                repo_path=repo,
                repository=name or repo.resolve().name,
                revision=commit,
                reviewers=reviewers,
                verdict=verdict,
                scope=scope,
                notes=notes,
                clock=SystemClock(),
            )
        finally:
            db.close()
        if out is not None:
            files.write_json(out, rec.envelope.to_json())
        p = rec.predicate
        reviewer_ids = [r.id for r in p.reviewers]
        summary: dict[str, Any] = {
            "ok": True,
            "review_id": rec.review_id,
            "repository": p.repository,
            "commit": p.commit,
            "range": p.range.model_dump(),
            "commits": p.commits,
            "authors": p.authors,
            "reviewers": reviewer_ids,
            "verdict": p.verdict,
            "envelope": str(out) if out else None,
        }
        if as_json:
            emit_json(summary)
        else:
            console.print(
                f"Review {rec.review_id[:16]}… of {p.repository}@{p.commit[:12]} "
                f"({p.commits} commit(s) since {(p.range.base or 'root')[:12]}), "
                f"verdict [bold]{p.verdict}[/] by {', '.join(reviewer_ids)}"
            )


@releases_app.command("build")
def build_cmd(
    repo: Path = typer.Option(..., "--repo", help="Path of the git repository."),
    commit: str = typer.Option(..., "--commit", help="Commit (or revision) to build."),
    name: str | None = typer.Option(None, "--name", help="Repository name in policy."),
    command: str = typer.Option(..., "--command", help="Build argv, e.g. 'python3 build.py o'."),
    output: str = typer.Option(..., "--output", help="Artifact path the command writes."),
    builder_id: str = typer.Option(..., "--builder-id", help="This builder's id (URI)."),
    builder_key: Path = typer.Option(..., "--builder-key", help="PEM key signing provenance."),
    out_dir: Path = typer.Option(Path("dist"), "--out-dir", help="Where to write the results."),
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Reference builder: build COMMIT in a clean export and sign SLSA provenance for it."""
    with reported_errors(as_json):
        from bastion.releases.builder import build_with_provenance

        h = _home(home)
        rule = files.load_policy(h.path).repository(name or repo.resolve().name)
        result = build_with_provenance(
            repo_path=repo,
            repository_uri=rule.uri,
            revision=commit,
            command=shlex.split(command),
            output=output,
            builder_id=builder_id,
            builder_key=files.load_key_file(builder_key),
            clock=SystemClock(),
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        artifact = out_dir / result.artifact_name
        artifact.write_bytes(result.artifact)
        prov = out_dir / f"{result.artifact_name}.provenance.json"
        files.write_json(prov, result.provenance.to_json())
        info = {
            "ok": True,
            "artifact": str(artifact),
            "sha256": result.sha256,
            "commit": result.commit,
            "provenance": str(prov),
        }
        if as_json:
            emit_json(info)
        else:
            console.print(f"Built {artifact} sha256 {result.sha256}\nprovenance: {prov}")


@releases_app.command("rebuild")
def rebuild_cmd(
    provenance: Path = typer.Option(..., "--provenance", help="The DSSE provenance file."),
    repo: Path = typer.Option(..., "--repo", help="Path of the git repository."),
    artifact: Path | None = typer.Option(None, "--artifact", help="Artifact to compare with."),
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Rerun the build a (trusted) provenance records and compare the bytes."""
    with reported_errors(as_json):
        from bastion.releases.rebuild import rebuild

        h = _home(home)
        result = rebuild(
            parse_envelope(files.read_json(provenance, "provenance")),
            files.load_policy(h.path),
            repo_path=repo,
            artifact=read_input_file(artifact, "artifact") if artifact else None,
        )
        if as_json:
            emit_json({"ok": result.reproducible, **result.to_json()})
        else:
            verdict = "[green]reproducible[/]" if result.reproducible else "[red]DIFFERENT[/]"
            console.print(
                f"{verdict}: rebuilt {result.rebuilt_sha256}, "
                f"provenance names {', '.join(result.expected_sha256)}"
            )
        if not result.reproducible:
            raise typer.Exit(6)


# --- client verification ---------------------------------------------------------------------


@releases_app.command("verify")
def verify_cmd(
    artifact: Path = typer.Argument(..., help="The artifact to check."),
    bundle: Path = typer.Option(..., "--bundle", help="Trust bundle (JSON)."),
    evidence: Path = typer.Option(..., "--evidence", help="Release evidence (JSON)."),
    state: Path | None = typer.Option(
        None, "--state", help="Directory remembering the last checkpoint seen."
    ),
    app: str = typer.Option(..., "--app", help="The app id the release must be approved for."),
    channel: str = typer.Option(
        ..., "--channel", help="The channel the release must be approved for."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Offline: is ARTIFACT an approved, logged, reviewed release? Non-zero exit if not."""
    with reported_errors(as_json):
        from bastion.releases.bundle import MAX_BUNDLE_BYTES
        from bastion.releases.verify import MAX_EVIDENCE_BYTES, DirectoryState, verify_release

        if not artifact.is_file():
            raise InputError("artifact not found", file=str(artifact))
        # Parsed with the verifier's own bounds (size, nesting, no duplicate keys): a hostile
        # file is a clear InputError, never a traceback.
        result = verify_release(
            artifact,
            files.read_json(evidence, "evidence", max_bytes=MAX_EVIDENCE_BYTES),
            files.read_json(bundle, "trust bundle", max_bytes=MAX_BUNDLE_BYTES),
            DirectoryState(state) if state is not None else None,
            app=app,
            channel=channel,
        )
        if as_json:
            emit_json(result.to_json())
        else:
            table = Table(title=f"{artifact.name} sha256 {result.artifact_sha256[:16]}…")
            table.add_column("check")
            table.add_column("result")
            table.add_column("detail")
            for c in result.checks:
                table.add_row(c.name, "[green]ok[/]" if c.ok else "[red]FAIL[/]", c.detail)
            console.print(table)
            if result.ok:
                console.print(f"[bold green]APPROVED[/] {result.app}/{result.channel}")
            else:
                console.print(f"[bold red]REJECTED[/] {result.code}: {result.message}")
        if not result.ok:
            raise typer.Exit(6)


# --- the custodian: approvals, evidence, trust bundles ---------------------------------------


@contextmanager
def _custodian(home: Path | None) -> Iterator[tuple[Home, Database, Log]]:
    """The home's database (release tables ensured) and log (no background publisher)."""
    from bastion.ledger.log import open_log
    from bastion.releases.reviewing import initialize_releases
    from bastion.wiring import open_store

    h = _home(home)
    db = open_store(h)
    try:
        initialize_releases(db)
        log = open_log(h, db, SystemClock(), background=False)
        try:
            yield h, db, log
        finally:
            log.close()
    finally:
        db.close()


@releases_app.command("approve")
def approve_cmd(
    artifact: Path = typer.Argument(..., help="The built artifact."),
    provenance: Path = typer.Option(..., "--provenance", help="Its DSSE provenance file."),
    app: str = typer.Option(..., "--app", help="App id, e.g. com.example.app."),
    channel: str = typer.Option("stable", "--channel", help="Release channel."),
    actor: str = typer.Option("release-custodian", "--actor", help="Who approves."),
    reason: str = typer.Option(
        "release approved: reviewed source, trusted build", "--reason", help="Why."
    ),
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Check provenance and reviews, sign a VSA, append it to the ledger, publish a checkpoint."""
    with reported_errors(as_json), _custodian(home) as (h, db, log):
        from bastion.events import Actor
        from bastion.keys.signing import load_or_create_signing_key
        from bastion.releases.approve import approve_release, custodian_verifier_id

        approved = approve_release(
            db=db,
            ledger=log,
            policy=files.load_policy(h.path),
            custodian_key=load_or_create_signing_key(h.keyring_dir, "custodian"),
            verifier_id=custodian_verifier_id(log.origin),
            actor=Actor(id=actor, kind="operator", role="release approver"),
            artifact=read_input_file(artifact, "artifact"),
            artifact_name=artifact.name,
            provenance=parse_envelope(files.read_json(provenance, "provenance")),
            app=app,
            channel=channel,
            clock=SystemClock(),
            reason=reason,
        )
        published = log.publish()
        info = {
            "ok": True,
            "artifact_sha256": approved.artifact_sha256,
            "app": app,
            "channel": channel,
            "log_index": approved.receipt.index,
            "vsa_sha256": approved.vsa.sha256(),
            "commit": approved.commit,
            "reviewers": list(approved.reviewers),
            "checkpoint_size": getattr(published, "tree_size", None),
        }
        if as_json:
            emit_json(info)
        else:
            console.print(
                f"[bold green]Approved[/] {approved.artifact_sha256} for {app}/{channel}: "
                f"ledger index {approved.receipt.index}, commit {approved.commit[:12]}, "
                f"reviewers {', '.join(approved.reviewers)}"
            )


@releases_app.command("evidence")
def evidence_cmd(
    artifact: Path = typer.Argument(..., help="The approved artifact."),
    app: str = typer.Option(..., "--app", help="App id."),
    channel: str = typer.Option("stable", "--channel", help="Release channel."),
    out: Path = typer.Option(..., "--out", help="Where to write the evidence JSON."),
    from_size: list[int] = typer.Option(
        [], "--from-size", help="A tree size a client holds (adds a consistency proof)."
    ),
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Write the offline evidence for an approved artifact (entry, tlog-proof, consistency)."""
    with reported_errors(as_json), _custodian(home) as (_h, db, log):
        from bastion.releases.evidence import release_evidence

        evidence = release_evidence(
            db,
            log,
            artifact_sha256=sha256_file(artifact),
            app=app,
            channel=channel,
            clock=SystemClock(),
            known_sizes=from_size,
        )
        files.write_json(out, evidence.to_json())
        if as_json:
            emit_json(
                {
                    "ok": True,
                    "out": str(out),
                    "consistency_from": [c.old_size for c in evidence.consistency],
                }
            )
        else:
            console.print(f"Wrote {out}")


@releases_app.command("bundle")
def bundle_cmd(
    out: Path = typer.Option(..., "--out", help="Where to write the trust bundle JSON."),
    valid_days: int = typer.Option(90, "--valid-days", min=1, max=3650),
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Write the trust bundle apps ship: custodian key, log and witness keys, policy, expiry."""
    with reported_errors(as_json), _custodian(home) as (h, _db, log):
        from bastion.clock import iso
        from bastion.keys.signing import load_or_create_signing_key
        from bastion.releases.approve import custodian_verifier_id
        from bastion.releases.bundle import CustodianTrust, LogTrust, TrustBundle, WitnessTrust
        from bastion.releases.ledger_link import witness_vkeys

        now = SystemClock().now()
        custodian = load_or_create_signing_key(h.keyring_dir, "custodian")
        bundle = TrustBundle(
            issued_at=iso(now),
            expires_at=iso(now + timedelta(days=valid_days)),
            custodian=CustodianTrust(
                verifier_id=custodian_verifier_id(log.origin),
                keys=[
                    KeyHolder(id="custodian", public_key=public_key_to_b64(custodian.public_key()))
                ],
            ),
            log=LogTrust(origin=log.origin, vkey=log.vkey),
            witnesses=WitnessTrust(vkeys=witness_vkeys(log), quorum=log.quorum),
            policy=files.load_policy(h.path),
        )
        files.write_json(out, bundle.to_json())
        if as_json:
            emit_json({"ok": True, "out": str(out), "expires_at": bundle.expires_at})
        else:
            console.print(f"Wrote {out} (expires {bundle.expires_at})")


def sha256_file(path: Path) -> str:
    return hashlib.sha256(read_input_file(path, "artifact")).hexdigest()
