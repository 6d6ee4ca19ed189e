"""Unauthenticated endpoints (health, JWKS, metrics) and the caller's view (whoami, datasets)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from bastion import __version__
from bastion.gateway.deps import CurrentPrincipal, RuntimeDep
from bastion.gateway.errors import ERROR_RESPONSES
from bastion.gateway.models import DatasetOut, Health, WhoAmI

router = APIRouter()


@router.get("/health", response_model=Health, tags=["service"])
def health(rt: RuntimeDep) -> Health:
    """Liveness and readiness: the database answers, a policy is loaded, the log's size."""
    checks: dict[str, str] = {}
    log_size: int | None = None
    policy_sha: str | None = None
    try:
        rt.db.query("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unavailable ({type(exc).__name__})"
    try:
        policy_sha = rt.policy_store.active_sha256()
        checks["policy"] = "ok" if policy_sha else "no policy loaded"
    except Exception as exc:
        checks["policy"] = f"unavailable ({type(exc).__name__})"
    try:
        log_size = int(rt.ledger.size())
        checks["ledger"] = "ok"
    except Exception as exc:
        checks["ledger"] = f"unavailable ({type(exc).__name__})"
    ok = all(v == "ok" for v in checks.values())
    return Health(
        status="ok" if ok else "degraded",
        version=__version__,
        database=rt.db.description,
        log_size=log_size,
        policy_sha256=policy_sha,
        checks=checks,
    )


@router.get("/.well-known/jwks.json", tags=["principals"])
def jwks(rt: RuntimeDep) -> dict[str, list[dict[str, str]]]:
    """The custodian issuer's public keys (RFC 7517), for anyone verifying its tokens."""
    return rt.issuer.jwks()


@router.get(
    "/metrics",
    tags=["service"],
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
)
def metrics(rt: RuntimeDep) -> Response:
    """Prometheus metrics. Labels carry route templates and kinds, never protected values."""
    return Response(rt.metrics.render(), media_type=rt.metrics.content_type)


@router.get("/whoami", response_model=WhoAmI, tags=["principals"], responses=ERROR_RESPONSES)
def whoami(principal: CurrentPrincipal, rt: RuntimeDep) -> WhoAmI:
    """The caller as the gateway sees them, with the flags policy derives."""
    attrs = rt.engine().attributes(principal)
    return WhoAmI(
        id=principal.id,
        issuer=principal.issuer,
        role=principal.role,
        employer=principal.employer,
        employer_country=principal.employer_country,
        location_country=principal.location_country,
        clearance=principal.clearance,
        mfa=attrs.mfa,
        covered_person=attrs.covered_person,
        custodian=attrs.custodian,
    )


@router.get("/datasets", response_model=list[DatasetOut], tags=["data"], responses=ERROR_RESPONSES)
def datasets(principal: CurrentPrincipal, rt: RuntimeDep) -> list[DatasetOut]:
    """The catalog: datasets, fields, classifications and sensitive categories (no data)."""
    out: list[DatasetOut] = []
    for ds in rt.catalog.datasets:
        fields: list[dict[str, Any]] = [
            {
                "name": f.name,
                "type": f.type.value,
                "classification": f.classification.value,
                "category": f.category.value if f.category else None,
                "pseudonymize": f.pseudonymize,
            }
            for f in ds.fields
        ]
        out.append(
            DatasetOut(
                name=ds.name,
                record_id=ds.record_id,
                subject_key=ds.subject_key,
                description=ds.description,
                fields=fields,
            )
        )
    return out
