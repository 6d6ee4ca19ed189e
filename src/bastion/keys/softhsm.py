"""Throwaway SoftHSM2 tokens for tests, benchmarks and demos: no manual step.

SoftHSM reads ``SOFTHSM2_CONF`` when the PKCS#11 library is first initialized in a process, so
:func:`configure` must run before any provider opens the library; later tokens in the same
directory are picked up by the provider (it re-initializes the library on a missing token).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

DEFAULT_LIBRARY = "/usr/lib/softhsm/libsofthsm2.so"


@dataclass(frozen=True)
class SoftHsmToken:
    library: str
    label: str
    pin: str
    so_pin: str


def available(library: str = DEFAULT_LIBRARY) -> bool:
    return Path(library).exists() and shutil.which("softhsm2-util") is not None


_configured: Path | None = None


def configure(directory: Path) -> Path:
    """Point this process (and its children) at a private token directory. Returns the conf.

    Only the first call in a process takes effect: the library keeps the directory it was
    initialized with, so later calls return the conf already in force.
    """
    global _configured
    if _configured is not None:
        return _configured
    tokens = directory / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    os.environ["SOFTHSM2_CONF"] = str(conf)
    _configured = conf
    return conf


def make_token(label: str | None = None, library: str = DEFAULT_LIBRARY) -> SoftHsmToken:
    """Initialize a fresh token in the configured directory with random PINs."""
    if "SOFTHSM2_CONF" not in os.environ:
        raise RuntimeError("call configure() first: SOFTHSM2_CONF is not set")
    token = SoftHsmToken(
        library=library,
        label=label or f"bastion-{secrets.token_hex(4)}",
        pin=secrets.token_hex(8),
        so_pin=secrets.token_hex(8),
    )
    subprocess.run(
        [
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            token.label,
            "--pin",
            token.pin,
            "--so-pin",
            token.so_pin,
        ],
        check=True,
        capture_output=True,
    )
    return token


def token_dir(token: SoftHsmToken) -> Path:
    """The directory that holds ``token``'s objects (tests move it away and back to make a
    token vanish and return), read from the ``SOFTHSM2_CONF`` in force."""
    if "SOFTHSM2_CONF" not in os.environ:
        raise RuntimeError("call configure() first: SOFTHSM2_CONF is not set")
    tokens: Path | None = None
    for line in Path(os.environ["SOFTHSM2_CONF"]).read_text().splitlines():
        name, _, value = line.partition("=")
        if name.strip() == "directories.tokendir":
            tokens = Path(value.strip())
    if tokens is None:
        raise RuntimeError("SOFTHSM2_CONF names no directories.tokendir")
    label = token.label.encode()
    for candidate in sorted(tokens.iterdir()):
        info = candidate / "token.object"
        if info.is_file() and label in info.read_bytes():
            return candidate
    raise FileNotFoundError(f"no directory of token {token.label!r} in {tokens}")


def delete_token(token: SoftHsmToken) -> None:
    subprocess.run(
        ["softhsm2-util", "--delete-token", "--token", token.label],
        check=False,
        capture_output=True,
    )
