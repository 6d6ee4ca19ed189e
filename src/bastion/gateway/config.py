"""The gateway's settings: the ``[gateway]`` table of bastion.toml, with safe defaults.

```toml
[gateway]
issuer = "bastion"                # iss of tokens from `bastion principals issue`
audience = "bastion-gateway"      # aud every accepted token must carry
max_page_size = 500               # search/list pages; larger requests get a 422
max_batch = 500                   # record ids in one batch read
max_export = 10000                # records in one export
max_write_batch = 500             # records in one write (all or nothing)
max_change_wait_s = 30.0          # how long a change-feed request may wait for changes
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
from pathlib import Path

from bastion.catalog import SensitiveCategory
from bastion.errors import ConfigError
from bastion.gateway.auth import TrustedIssuer, issuer_from_config
from bastion.home import Home
from bastion.settings import GatewaySettings, Settings

# The gateway's settings are the ``[gateway]`` section itself (``bastion.settings``): its
# types, defaults and ranges are declared once there.
GatewayConfig = GatewaySettings


def gateway_config(settings: Settings) -> GatewayConfig:
    """``[gateway]``, checked by ``bastion.settings``, plus what needs the catalog's
    vocabulary: every ``bulk_thresholds`` key must be a 28 CFR 202 category."""
    known = {c.value for c in SensitiveCategory}
    for name in settings.gateway.bulk_thresholds:
        if name not in known:
            raise ConfigError(
                f"[gateway] bulk_thresholds: unknown category {name!r} "
                f"(known: {', '.join(sorted(known))})"
            )
    return settings.gateway


def issuers_dir(home: Home) -> Path:
    return home.path / "issuers"


def load_external_issuers(home: Home, config: GatewayConfig) -> list[TrustedIssuer]:
    """The configured external issuers plus those added with ``principals add-issuer``."""
    out = [
        issuer_from_config(
            entry.model_dump(exclude_none=True),
            base=home.path,
            source=f"{home.config_file} [[gateway.issuers]]",
        )
        for entry in config.issuers
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
