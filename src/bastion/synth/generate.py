"""``bastion synth``: generate the platform's three datasets into a directory, streaming.

Generation of chunk *i+1* overlaps with compressing and writing chunk *i* (NumPy and Arrow
release the GIL), which is what the second core of a small machine is for.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bastion.catalog import Catalog, default_catalog
from bastion.errors import InputError
from bastion.synth.platform import Platform, SynthSpec, arrow_schema
from bastion.synth.writers import Format, writing

DATASETS = ("users", "videos", "events")
MANIFEST = "synth.json"

Progress = Callable[[str, int], None]


@dataclass
class SynthResult:
    out_dir: Path
    fmt: Format
    spec: SynthSpec
    files: dict[str, Path] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "out_dir": str(self.out_dir),
            "format": self.fmt.value,
            "seed": self.spec.seed,
            "campaigns": self.spec.campaigns,
            "files": {k: str(v) for k, v in self.files.items()},
            "rows": self.rows,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "seconds": round(self.seconds, 3),
        }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def generate(
    spec: SynthSpec,
    out_dir: Path,
    fmt: Format | str = Format.PARQUET,
    *,
    catalog: Catalog | None = None,
    on_progress: Progress | None = None,
    datasets: tuple[str, ...] = DATASETS,
) -> SynthResult:
    try:
        fmt = Format(fmt)
    except ValueError:
        raise InputError(f"unknown format {fmt!r} (expected parquet, csv or jsonl)") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    platform = Platform(spec, catalog or default_catalog())
    result = SynthResult(out_dir=out_dir, fmt=fmt, spec=spec)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="synth-writer") as pool:
        for name in datasets:
            path = out_dir / f"{name}.{fmt.value}"
            schema = arrow_schema(platform.catalog.dataset(name))
            rows = 0
            with writing(fmt, path, schema) as writer:
                pending: Future[None] | None = None
                for table in platform.chunks(name):
                    if pending is not None:
                        pending.result()
                    pending = pool.submit(writer.write, table)
                    rows += table.num_rows
                    if on_progress is not None:
                        on_progress(name, table.num_rows)
                if pending is not None:
                    pending.result()
            result.files[name] = path
            result.rows[name] = rows
            result.bytes[name] = path.stat().st_size
    result.seconds = time.perf_counter() - started
    for name, path in result.files.items():
        result.sha256[name] = _sha256(path)
    (out_dir / MANIFEST).write_text(json.dumps(result.to_json(), indent=2, sort_keys=True) + "\n")
    return result
