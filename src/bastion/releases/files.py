"""File I/O at the edge: the release policy under BASTION_HOME, key files, JSON documents.

The release policy lives in ``$BASTION_HOME/releases/policy.json`` (mode 0600, written
atomically). Reviews and approvals live in the Database (see ``reviewing.py``).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from bastion.errors import ConfigError, InputError
from bastion.keys.signing import read_key_pem, write_new_key_pem
from bastion.releases.intoto import describe_validation_error
from bastion.releases.policy import ReleasePolicy
from bastion.releases.strictjson import JsonRefused
from bastion.releases.strictjson import loads as strict_loads


def policy_path(home_path: Path) -> Path:
    return home_path / "releases" / "policy.json"


def load_policy(home_path: Path) -> ReleasePolicy:
    """The home's release policy; an empty one (nothing trusted) if none was written yet."""
    path = policy_path(home_path)
    if not path.exists():
        return ReleasePolicy()
    try:
        return ReleasePolicy.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe_validation_error(exc)}") from None


def write_private(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``, mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_policy(home_path: Path, policy: ReleasePolicy) -> Path:
    path = policy_path(home_path)
    write_private(path, (json.dumps(policy.model_dump(mode="json"), indent=2) + "\n").encode())
    return path


def read_json(path: Path, what: str, *, max_bytes: int | None = None) -> Any:
    """A JSON document named on the command line, parsed strictly (at most ``max_bytes``,
    bounded nesting, no key given twice; see ``strictjson``); else InputError naming ``what``
    and the file, never a traceback."""
    try:
        return strict_loads(path.read_bytes(), max_bytes=max_bytes)
    except FileNotFoundError:
        raise InputError(f"{what} not found", file=str(path)) from None
    except IsADirectoryError:
        raise InputError(f"{what} is a directory", file=str(path)) from None
    except OSError as exc:
        raise InputError(f"{what} unreadable ({exc.strerror})", file=str(path)) from None
    except JsonRefused as exc:
        raise InputError(f"{what} is not valid JSON ({exc})", file=str(path)) from None


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def create_key_file(path: Path) -> Ed25519PrivateKey:
    """A new Ed25519 key as PKCS#8 PEM, mode 0600; refuses to overwrite an existing file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return write_new_key_pem(path)
    except FileExistsError:
        raise InputError("key file already exists; refusing to overwrite", file=str(path)) from None


def load_key_file(path: Path) -> Ed25519PrivateKey:
    return read_key_pem(path, f"key file {path}")
