"""The gateway's settings: the ``[gateway]`` table of bastion.toml, with safe defaults.

```toml
[gateway]
issuer = "bastion"                # iss of tokens from `bastion principals issue`
audience = "bastion-gateway"      # aud every accepted token must carry
max_page_size = 500               # search/list pages; larger requests get a 422
max_batch = 500                   # record ids in one batch read
max_export = 10000                # records in one export
bulk_thresholds = { precise_geolocation = 1000 }   # 28 CFR 202.205 limits (default: the law's)
tickets = "registered"            # a ticket's subjects come from the ticket a ticketing
                                  # service registered; "caller": from the reader (old)

[[gateway.issuers]]               # an external OIDC issuer, trusted by its JWKS
issuer = "https://idp.example"
jwks_file = "idp-jwks.json"       # relative to BASTION_HOME; or jwks_url = "https://..."
claims = { employer = "org" }     # optional: Bastion attribute -> the IdP's claim name
```

``bastion principals add-issuer`` writes one JSON file per issuer under ``issuers/`` in the
home instead of rewriting the config; both sources are read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion.catalog import SensitiveCategory
from bastion.errors import ConfigError
from bastion.gateway.auth import DEFAULT_AUDIENCE, DEFAULT_ISSUER, TrustedIssuer, issuer_from_config
from bastion.home import Home
from bastion.settings import Settings


@dataclass(frozen=True)
class GatewayConfig:
    issuer: str = DEFAULT_ISSUER
    audience: str = DEFAULT_AUDIENCE
    max_page_size: int = 500
    max_batch: int = 500
    max_export: int = 10_000
    external_issuers: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    # category -> limit of distinct subjects per 12 months, for each employer and principal;
    # empty: the legal thresholds of 28 CFR 202.205.
    bulk_thresholds: tuple[tuple[str, int], ...] = ()
    # "registered": only principals in the registry, within their registered attributes
    # (policy/registry.py); "any": any signed sub (the behaviour before the registry).
    principals: str = "registered"
    # "registered": a read under a ticket names an open ticket a ticketing service registered
    # (POST /tickets), and the rows it may touch are that ticket's subjects
    # (policy/tickets.py); "caller": the reader's own ticket and ticket_subjects, unchecked
    # (the behaviour before registered tickets).
    tickets: str = "registered"

    @staticmethod
    def from_settings(settings: Settings) -> GatewayConfig:
        """``[gateway]``, checked by ``bastion.settings``; the category names here, since
        they are the catalog's vocabulary."""
        table = settings.gateway
        known = {c.value for c in SensitiveCategory}
        for name in table.bulk_thresholds:
            if name not in known:
                raise ConfigError(
                    f"[gateway] bulk_thresholds: unknown category {name!r} "
                    f"(known: {', '.join(sorted(known))})"
                )
        return GatewayConfig(
            principals=table.principals,
            tickets=table.tickets,
            issuer=table.issuer,
            audience=table.audience,
            max_page_size=table.max_page_size,
            max_batch=table.max_batch,
            max_export=table.max_export,
            external_issuers=tuple(i.model_dump(exclude_none=True) for i in table.issuers),
            bulk_thresholds=tuple(sorted(table.bulk_thresholds.items())),
        )


def issuers_dir(home: Home) -> Path:
    return home.path / "issuers"


def load_external_issuers(home: Home, config: GatewayConfig) -> list[TrustedIssuer]:
    """The configured external issuers plus those added with ``principals add-issuer``."""
    out = [
        issuer_from_config(entry, base=home.path, source=f"{home.config_file} [[gateway.issuers]]")
        for entry in config.external_issuers
    ]
    folder = issuers_dir(home)
    if folder.is_dir():
        for path in sorted(folder.glob("*.json")):
            try:
                entry = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise ConfigError(f"{path}: unreadable issuer entry: {exc}") from None
            if not isinstance(entry, dict):
                raise ConfigError(f"{path}: an issuer entry must be a JSON object")
            out.append(issuer_from_config(entry, base=folder, source=str(path)))
    return out
