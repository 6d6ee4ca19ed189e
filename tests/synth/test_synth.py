"""bastion synth: determinism, validity against the catalog in every format, realism."""

from __future__ import annotations

import csv
import json
from collections import Counter
from datetime import date
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from bastion.catalog import default_catalog, validate_row
from bastion.cli.main import app
from bastion.synth import CHUNK_ROWS, MANIFEST, SynthSpec, generate

SMALL = SynthSpec(seed=11, users=2_000, videos=300, events=20_000, campaigns=40)
CATALOG = default_catalog()


def _rows(path: Path) -> list[dict[str, object]]:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()  # type: ignore[no-any-return]
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


@pytest.fixture(scope="module")
def parquet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth-parquet")
    generate(SMALL, out, "parquet")
    return out


def test_same_seed_same_bytes(tmp_path: Path, parquet_dir: Path) -> None:
    again = generate(SMALL, tmp_path / "again", "parquet")
    first = json.loads((parquet_dir / MANIFEST).read_text())
    assert again.sha256 == first["sha256"]
    for name in ("users", "videos", "events"):
        assert (tmp_path / "again" / f"{name}.parquet").read_bytes() == (
            parquet_dir / f"{name}.parquet"
        ).read_bytes()


def test_other_seed_other_data(tmp_path: Path, parquet_dir: Path) -> None:
    other = generate(
        SynthSpec(seed=12, users=2_000, videos=300, events=20_000, campaigns=40),
        tmp_path,
        "parquet",
    )
    first = json.loads((parquet_dir / MANIFEST).read_text())
    assert all(other.sha256[k] != first["sha256"][k] for k in first["sha256"])


def test_same_rows_in_every_format(tmp_path: Path, parquet_dir: Path) -> None:
    """CSV and JSONL hold the same rows as Parquet once validated against the catalog."""
    for fmt in ("csv", "jsonl"):
        out = tmp_path / fmt
        generate(SMALL, out, fmt)
        for name in ("users", "events"):
            ds = CATALOG.dataset(name)
            ref = _rows(parquet_dir / f"{name}.parquet")
            got = _rows(out / f"{name}.{fmt}")
            assert len(got) == len(ref)
            for i in (0, 1, len(ref) // 2, len(ref) - 1):
                want = validate_row(ds, ref[i], file="p", row_number=i + 1)
                have = validate_row(ds, got[i], file=fmt, row_number=i + 1)
                assert have == want, (fmt, name, i)


@pytest.mark.parametrize("name", ["users", "videos", "events"])
def test_every_row_valid_against_catalog(parquet_dir: Path, name: str) -> None:
    ds = CATALOG.dataset(name)
    rows = _rows(parquet_dir / f"{name}.parquet")
    ids = set()
    for i, row in enumerate(rows, 1):
        out = validate_row(ds, row, file=f"{name}.parquet", row_number=i)
        ids.add(out[ds.record_id])
    assert len(ids) == len(rows), "record ids are unique"


def test_age_band_matches_birth_date(parquet_dir: Path) -> None:
    ref = date(2026, 1, 1)
    bands = {"13-17": (13, 17), "18-24": (18, 24), "25-34": (25, 34), "35-44": (35, 44)}
    bands |= {"45-54": (45, 54), "55-64": (55, 64), "65+": (65, 200)}
    for row in _rows(parquet_dir / "users.parquet"):
        born = row["birth_date"]
        assert isinstance(born, date)
        age = ref.year - born.year - ((ref.month, ref.day) < (born.month, born.day))
        lo, hi = bands[str(row["age_band"])]
        assert lo <= age <= hi, row


def test_events_are_realistic(parquet_dir: Path) -> None:
    events = pq.read_table(parquet_dir / "events.parquet").to_pylist()
    users = {r["user_id"]: r for r in pq.read_table(parquet_dir / "users.parquet").to_pylist()}
    per_user = Counter(e["user_id"] for e in events)
    counts = sorted(per_user.values())
    assert counts[-1] > 20 * counts[len(counts) // 2], "engagement is heavy-tailed"
    types = Counter(e["event_type"] for e in events)
    assert types["view"] > types["like"] > types["share"] > 0
    assert types["ad_impression"] > types["ad_click"] > 0
    ctr = types["ad_click"] / types["ad_impression"]
    assert 0.003 < ctr < 0.1
    for e in events[:2000]:
        u = users[e["user_id"]]
        assert (e["age_band"], e["region"]) == (u["age_band"], u["region"])
        assert e["device_id"] in u["device_ids"]
        is_ad = e["event_type"] in ("ad_impression", "ad_click")
        assert (e["campaign_id"] is not None) == is_ad
        assert (e["revenue_usd"] is not None) == is_ad
        assert (e["watch_time_s"] is not None) == (e["event_type"] == "view")
        assert e["ts"].date() == e["day"]


def test_streams_in_chunks(tmp_path: Path) -> None:
    spec = SynthSpec(seed=3, users=500, videos=50, events=CHUNK_ROWS + 10)
    result = generate(spec, tmp_path, "parquet", datasets=("events",))
    meta = pq.ParquetFile(result.files["events"]).metadata
    assert meta.num_rows == CHUNK_ROWS + 10
    assert meta.num_row_groups == 2, "one row group per chunk: nothing held whole in memory"
    assert not list(tmp_path.glob(".*partial")), "no partial files left behind"


def test_cli_json(tmp_path: Path) -> None:
    args = ["synth", "--out", str(tmp_path), "--seed", "5", "--users", "100", "--videos", "20"]
    res = CliRunner().invoke(app, [*args, "--events", "1000", "--format", "jsonl", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["ok"] and out["rows"] == {"users": 100, "videos": 20, "events": 1000}
    assert (tmp_path / "events.jsonl").exists()


def test_cli_rejects_bad_sizes(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["synth", "--out", str(tmp_path), "--users", "0", "--json"])
    assert res.exit_code == 2
    assert "at least 1" in json.loads(res.stdout)["message"]
    res = CliRunner().invoke(app, ["synth", "--out", str(tmp_path), "--format", "xml"])
    assert res.exit_code != 0
    assert not list(tmp_path.iterdir())
