"""Optional parts of the install: what each extra brings, and a clear error when one is absent.

The core install is what the embedded default needs (the vault, the gateway, the ledger, the
policy engine and its invariant checker, release assurance). The rest is opt-in, so a
gateway host does not carry a JVM binding or a plotting library it never uses::

    pip install 'bastion[analytics]'   # the clean room (DuckDB, OpenDP) and `bastion synth`
    pip install 'bastion[spark]'       # the clean room's Spark engine
    pip install 'bastion[charts]'      # `bastion cleanroom query --chart`
    pip install 'bastion[hsm]'         # the PKCS#11 key provider
    pip install 'bastion[egress]'      # the NATS JetStream egress destination
    pip install 'bastion[all]'         # everything above

``pyproject.toml`` declares the same sets; ``tests/test_extras.py`` checks the two agree and
runs the embedded default with every optional package made unimportable.
"""

from __future__ import annotations

import importlib

from bastion.errors import ConfigError

# extra -> the top-level modules it installs that Bastion imports.
EXTRAS: dict[str, tuple[str, ...]] = {
    "analytics": ("duckdb", "polars", "opendp"),
    "spark": ("pyspark",),
    "charts": ("matplotlib",),
    "hsm": ("pkcs11",),
    "egress": ("nats",),
}


class MissingExtra(ConfigError):
    """A feature was asked for whose optional packages are not installed."""

    def __init__(self, extra: str, feature: str, module: str) -> None:
        super().__init__(
            f"{feature} needs the {extra!r} extra, which is not installed "
            f"(no module {module!r}): pip install 'bastion[{extra}]'"
        )
        self.extra = extra


def installed(extra: str) -> bool:
    try:
        require(extra, "")
    except MissingExtra:
        return False
    return True


def require(extra: str, feature: str) -> None:
    """Raise MissingExtra, naming the feature and the install command, unless ``extra`` is in.

    It imports the modules (rather than only looking for them) because a broken install, say
    a wheel for another platform, is as absent as a missing one.
    """
    for module in EXTRAS[extra]:
        try:
            importlib.import_module(module)
        except ImportError:
            raise MissingExtra(extra, feature, module) from None
