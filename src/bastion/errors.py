"""Error types whose messages are safe to show: they never carry protected plaintext."""

from __future__ import annotations


class BastionError(Exception):
    """Base for errors meant for the operator. The message must hold no protected value."""

    exit_code = 1


class NotInitialized(BastionError):
    exit_code = 3


class ConfigError(BastionError):
    exit_code = 2


class InputError(BastionError):
    """Bad input: names what is wrong and where (file, row, field)."""

    exit_code = 2

    def __init__(
        self,
        reason: str,
        *,
        file: str | None = None,
        row: int | None = None,
        dataset: str | None = None,
        field: str | None = None,
    ) -> None:
        self.reason = reason
        self.file = file
        self.row = row
        self.dataset = dataset
        self.field = field
        where = []
        if file is not None:
            where.append(f"file {file}")
        if row is not None:
            where.append(f"row {row}")
        if dataset is not None:
            where.append(f"dataset {dataset!r}")
        if field is not None:
            where.append(f"field {field!r}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {reason}" if prefix else reason)


class StoreUnavailable(BastionError):
    exit_code = 4


class KeyUnavailable(BastionError):
    """A key is missing, retired, or its provider (e.g. the HSM) cannot be reached. Fail closed."""

    exit_code = 5


class IntegrityError(BastionError):
    """Authentication failed: a ciphertext, wrapped key, tile, proof or signature was altered."""

    exit_code = 6


class LedgerUnavailable(BastionError):
    """The ledger could not durably record an event; nothing may be released."""

    exit_code = 7
