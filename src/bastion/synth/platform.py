"""The synthetic social video platform: users, videos and engagement events, in Arrow chunks.

Deterministic for a seed: every random stream is derived from ``(seed, stream, chunk)`` with
NumPy's ``SeedSequence``, and chunk boundaries are a fixed constant, so the same seed gives the
same rows (and, with the same library versions, the same file bytes) whatever the output format.

Only per-entity state is held in memory (a few arrays of ``users + videos + campaigns``
numbers); rows are produced ``CHUNK_ROWS`` at a time and handed to a writer.

Engagement is heavy-tailed: each user's activity weight is log-normal (sigma 1.5), so the
heaviest users produce hundreds of times the median user's events. The clean room's privacy
test removes exactly such a user.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bastion.catalog import Catalog, DatasetSpec, FieldType, default_catalog
from bastion.synth import arrays as A
from bastion.synth import vocab as V

CHUNK_ROWS = 1 << 18  # fixed: chunk boundaries are part of the deterministic stream
EPOCH = date(1970, 1, 1)
REFERENCE_DAY = date(2026, 1, 1)  # ages and age bands are taken on this day

_STREAM = {
    "users": 1,
    "videos": 2,
    "events": 3,
    "user_state": 11,
    "video_state": 12,
    "campaign_state": 13,
}


def _days(d: date) -> int:
    return (d - EPOCH).days


def arrow_type(ftype: FieldType) -> pa.DataType:
    return {
        FieldType.STRING: pa.string(),
        FieldType.INT: pa.int64(),
        FieldType.FLOAT: pa.float64(),
        FieldType.BOOL: pa.bool_(),
        FieldType.DATE: pa.date32(),
        FieldType.TIMESTAMP: pa.timestamp("ms", tz="UTC"),
        FieldType.STRING_LIST: pa.list_(pa.string()),
        FieldType.GEO: pa.struct([("lat", pa.float64()), ("lon", pa.float64())]),
    }[ftype]


def arrow_schema(dataset: DatasetSpec) -> pa.Schema:
    return pa.schema(
        [pa.field(f.name, arrow_type(f.type), nullable=f.nullable) for f in dataset.fields]
    )


@dataclass(frozen=True)
class SynthSpec:
    seed: int
    users: int
    videos: int
    events: int
    campaigns: int = 200

    def __post_init__(self) -> None:
        if self.users < 1 or self.videos < 1 or self.events < 0 or self.campaigns < 1:
            raise ValueError("users, videos and campaigns must be at least 1; events at least 0")
        if not 0 <= self.seed < 2**63:
            raise ValueError("seed must be in [0, 2**63)")


def _width(n: int, minimum: int) -> int:
    return max(minimum, len(str(max(n - 1, 0))))


class Platform:
    """Per-entity state (activity, popularity, campaigns) and the row generators."""

    def __init__(self, spec: SynthSpec, catalog: Catalog | None = None) -> None:
        self.spec = spec
        self.catalog = catalog or default_catalog()
        events = self.catalog.dataset("events")
        day_domain = events.field("day").domain
        assert day_domain is not None and day_domain.is_range
        days = day_domain.members()
        self.first_day = _days(days[0])  # type: ignore[arg-type]
        self.n_days = len(days)
        self.regions = list(V.REGIONS)
        self.age_bands = list(V.AGE_BANDS)
        self.categories = list(V.CATEGORY_WEIGHTS)
        self._check_against_catalog()
        self.user_id_width = _width(spec.users, 8)
        self.video_id_width = _width(spec.videos, 8)
        self.event_id_width = _width(spec.events, 10)

    def _check_against_catalog(self) -> None:
        # The generator's vocabularies must be exactly the catalog's declared domains,
        # otherwise the clean room would see values outside its public dimensions.
        for ds, fld, values in (
            ("users", "region", self.regions),
            ("users", "age_band", self.age_bands),
            ("videos", "category", self.categories),
            ("events", "event_type", ["view", "like", "share", "ad_impression", "ad_click"]),
        ):
            domain = self.catalog.dataset(ds).field(fld).domain
            if domain is None or set(domain.members()) != set(values):
                raise ValueError(f"catalog domain of {ds}.{fld} does not match the generator")

    def _rng(self, stream: str, chunk: int = 0) -> np.random.Generator:
        return np.random.default_rng(
            np.random.SeedSequence([self.spec.seed, _STREAM[stream], chunk])
        )

    # ---- per-entity state -------------------------------------------------------------------

    @cached_property
    def user_state(self) -> dict[str, np.ndarray]:
        n = self.spec.users
        rng = self._rng("user_state")
        activity = rng.lognormal(0.0, 1.5, n)
        region_w = np.array([V.REGIONS[r][2] for r in self.regions])
        band_w = np.array([V.AGE_BANDS[b][2] for b in self.age_bands])
        region = A.sample_cdf(rng, A.weighted_cdf(region_w), n)
        band = A.sample_cdf(rng, A.weighted_cdf(band_w), n)
        lo = np.array([V.AGE_BANDS[b][0] for b in self.age_bands])[band]
        hi = np.array([V.AGE_BANDS[b][1] for b in self.age_bands])[band]
        # An age in whole years, then a birthday within that year of life, so the band derived
        # from the birth date on REFERENCE_DAY is exactly the sampled band.
        age = rng.integers(lo, hi + 1)
        ref = _days(REFERENCE_DAY)
        birth = ref - (age * 365.2425).astype(np.int64) - rng.integers(1, 365, n)
        birth = self._fix_birthdays(birth, age)
        return {
            "activity_cdf": A.weighted_cdf(activity),
            "region": region,
            "band": band,
            "birth": birth,
            "devices": rng.integers(1, 4, n),
            "signup": rng.integers(_days(date(2019, 1, 1)), ref, n),
        }

    @staticmethod
    def _fix_birthdays(birth: A.I64, age: A.I64) -> A.I64:
        """Nudge each birth date so that the exact calendar age on REFERENCE_DAY is ``age``."""
        d = birth.astype("datetime64[D]")
        years = d.astype("datetime64[Y]").astype(np.int64) + 1970
        # On 1 January, someone born in year Y is 2025 - Y years old (2026 - Y if born 1 Jan).
        is_jan1 = (d - d.astype("datetime64[Y]")).astype(np.int64) == 0
        actual = REFERENCE_DAY.year - years - np.where(is_jan1, 0, 1)
        shift_years = actual - age
        fixed = (d.astype("datetime64[Y]") + shift_years.astype("timedelta64[Y]")).astype(
            "datetime64[D]"
        ) + (d - d.astype("datetime64[Y]"))
        out: A.I64 = fixed.astype(np.int64)
        return out

    @cached_property
    def video_state(self) -> dict[str, np.ndarray]:
        m = self.spec.videos
        rng = self._rng("video_state")
        rank = rng.permutation(m) + 1
        popularity = 1.0 / rank.astype(np.float64) ** 0.9
        duration = np.clip(np.round(rng.lognormal(3.4, 0.9, m)), 5, 600).astype(np.int64)
        return {"popularity_cdf": A.weighted_cdf(popularity), "duration": duration}

    @cached_property
    def campaign_state(self) -> dict[str, np.ndarray]:
        k = self.spec.campaigns
        rng = self._rng("campaign_state")
        rank = rng.permutation(k) + 1
        size = 1.0 / rank.astype(np.float64) ** 1.3
        ctr = np.clip(rng.beta(2.0, 110.0, k), 0.001, 0.2)
        cpm = np.round(rng.uniform(2.0, 15.0, k), 2)
        cpc = np.round(rng.uniform(0.2, 3.0, k), 2)
        return {"size_cdf": A.weighted_cdf(size), "ctr": ctr, "cpm": cpm, "cpc": cpc}

    # ---- row generators ---------------------------------------------------------------------

    def chunks(self, dataset: str) -> Iterator[pa.Table]:
        total = {"users": self.spec.users, "videos": self.spec.videos}.get(
            dataset, self.spec.events
        )
        make = {"users": self._users, "videos": self._videos, "events": self._events}[dataset]
        schema = arrow_schema(self.catalog.dataset(dataset))
        for chunk, start in enumerate(range(0, total, CHUNK_ROWS)):
            stop = min(start + CHUNK_ROWS, total)
            columns = make(self._rng(dataset, chunk), start, stop)
            yield pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)

    def _device_ids(self, user: A.I64, k: A.I64) -> pa.Array:
        key = (user.astype(np.uint64) << np.uint64(2)) | k.astype(np.uint64)
        salt = np.uint64(self.spec.seed & 0xFFFFFFFFFFFF) << np.uint64(16)
        h = A.splitmix64(A.splitmix64(key ^ salt))
        chars = np.empty((len(user), 17), dtype=np.uint8)
        chars[:, 0] = ord("d")
        chars[:, 1:] = A.hex_digits(h, 16)
        return A.strings_from_matrix(chars)

    def _ip_addresses(self, rng: np.random.Generator, n: int) -> pa.Array:
        octets = [A.int_strings(rng.integers(lo, 255, n)) for lo in (11, 0, 0, 1)]
        return A.join_strings(octets[0], ".", octets[1], ".", octets[2], ".", octets[3])

    def _users(self, rng: np.random.Generator, start: int, stop: int) -> dict[str, pa.Array]:
        n = stop - start
        idx = np.arange(start, stop, dtype=np.int64)
        st = self.user_state
        region = st["region"][start:stop]
        first = rng.integers(0, len(V.FIRST_NAMES), n)
        last = rng.integers(0, len(V.LAST_NAMES), n)
        first_s = A.take_strings(V.FIRST_NAMES, first)
        last_s = A.take_strings(V.LAST_NAMES, last)
        lower_first = A.take_strings([s.lower() for s in V.FIRST_NAMES], first)
        lower_last = A.take_strings([s.lower().replace("-", "") for s in V.LAST_NAMES], last)
        domain = A.take_strings(V.EMAIL_DOMAINS, rng.integers(0, len(V.EMAIL_DOMAINS), n))
        email = A.join_strings(lower_first, ".", lower_last, A.int_strings(idx % 9973), "@", domain)
        dial = {"US": "+1", "CA": "+1", "MX": "+52", "GB": "+44", "BR": "+55"}
        country_of = [V.REGIONS[r][0] for r in self.regions]
        phone_prefix = A.take_strings([dial[c] for c in country_of], region)
        phone_digits = A.strings_from_matrix(
            A.decimal_digits(rng.integers(2_000_000_000, 9_999_999_999, n), 10)
        )
        phone = A.join_strings(phone_prefix, phone_digits)
        phone = _masked(phone, rng.random(n) < 0.15)  # not everyone gives a phone
        city_lat = np.array([[c[0] for c in V.REGIONS[r][3]] for r in self.regions])
        city_lon = np.array([[c[1] for c in V.REGIONS[r][3]] for r in self.regions])
        city = rng.integers(0, city_lat.shape[1], n)
        lat = np.round(city_lat[region, city] + rng.normal(0, 0.08, n), 6)
        lon = np.round(city_lon[region, city] + rng.normal(0, 0.08, n), 6)
        location = pa.StructArray.from_arrays(
            [pa.array(lat), pa.array(lon)],
            names=["lat", "lon"],
            mask=pa.array(rng.random(n) < 0.2),  # location services off
        )
        ndev = st["devices"][start:stop]
        offsets = np.concatenate([[0], np.cumsum(ndev)]).astype(np.int32)
        dev_user = np.repeat(idx, ndev)
        dev_k = np.arange(len(dev_user)) - np.repeat(offsets[:-1], ndev)
        device_ids = pa.ListArray.from_arrays(
            pa.array(offsets), self._device_ids(dev_user, dev_k.astype(np.int64))
        )
        ip = self._ip_addresses(rng, n)
        return {
            "user_id": A.prefixed_ids("u", idx, self.user_id_width),
            "name": A.join_strings(first_s, " ", last_s),
            "email": email,
            "phone": phone,
            "birth_date": pa.array(st["birth"][start:stop].astype(np.int32), pa.date32()),
            "country": A.take_strings(country_of, region),
            "region": A.take_strings(self.regions, region),
            "age_band": A.take_strings(self.age_bands, st["band"][start:stop]),
            "signup_date": pa.array(st["signup"][start:stop].astype(np.int32), pa.date32()),
            "device_ids": device_ids,
            "ip_address": _masked(ip, rng.random(n) < 0.05),
            "location": location,
            "language": A.take_strings([V.REGIONS[r][1] for r in self.regions], region),
        }

    def _videos(self, rng: np.random.Generator, start: int, stop: int) -> dict[str, pa.Array]:
        n = stop - start
        idx = np.arange(start, stop, dtype=np.int64)
        creator = A.sample_cdf(rng, self.user_state["activity_cdf"], n)
        cat_w = np.array([V.CATEGORY_WEIGHTS[c] for c in self.categories])
        category = A.sample_cdf(rng, A.weighted_cdf(cat_w), n)
        title = A.join_strings(
            A.take_strings(V.TITLE_WORDS_A, rng.integers(0, len(V.TITLE_WORDS_A), n)),
            " ",
            A.take_strings(V.TITLE_WORDS_B, rng.integers(0, len(V.TITLE_WORDS_B), n)),
            " #",
            A.take_strings(self.categories, category),
        )
        lo_ms = _days(date(2024, 1, 1)) * 86_400_000
        hi_ms = (self.first_day + self.n_days - 1) * 86_400_000
        uploaded = rng.integers(lo_ms, hi_ms, n)
        return {
            "video_id": A.prefixed_ids("v", idx, self.video_id_width),
            "creator_id": A.prefixed_ids("u", creator, self.user_id_width),
            "title": title,
            "category": A.take_strings(self.categories, category),
            "duration_s": pa.array(self.video_state["duration"][start:stop]),
            "uploaded_at": pa.array(uploaded, pa.timestamp("ms", tz="UTC")),
            "region": A.take_strings(self.regions, self.user_state["region"][creator]),
            "upload_ip": self._ip_addresses(rng, n),
        }

    def _events(self, rng: np.random.Generator, start: int, stop: int) -> dict[str, pa.Array]:
        n = stop - start
        us, vs, cs = self.user_state, self.video_state, self.campaign_state
        user = A.sample_cdf(rng, us["activity_cdf"], n)
        video = A.sample_cdf(rng, vs["popularity_cdf"], n)
        organic_w = np.array(list(V.ORGANIC_EVENT_WEIGHTS.values()))
        # Codes follow the catalog's domain order: view, like, share, ad_impression, ad_click.
        etype = A.sample_cdf(rng, A.weighted_cdf(organic_w), n)
        is_ad = rng.random(n) < V.AD_EVENT_SHARE
        campaign = A.sample_cdf(rng, cs["size_cdf"], n)
        clicked = rng.random(n) < cs["ctr"][campaign]
        etype = np.where(is_ad, np.where(clicked, 4, 3), etype)
        # Time: a day in the declared domain, then an hour with an evening-heavy profile.
        day = self.first_day + rng.integers(0, self.n_days, n)
        hour_w = 1.0 + 0.8 * np.sin((np.arange(24) - 9) / 24 * 2 * np.pi)
        hour = A.sample_cdf(rng, A.weighted_cdf(hour_w), n)
        ts_ms = day * 86_400_000 + hour * 3_600_000 + rng.integers(0, 3_600_000, n)
        is_view = etype == 0
        duration = vs["duration"][video].astype(np.float64)
        watch = np.round(np.minimum(rng.lognormal(2.6, 1.0, n), duration), 1)
        revenue = np.where(
            etype == 4,
            cs["cpc"][campaign],
            cs["cpm"][campaign] / 1000.0,
        )
        device = self._device_ids(user, rng.integers(0, us["devices"][user]))
        event_types = ["view", "like", "share", "ad_impression", "ad_click"]
        return {
            "event_id": A.prefixed_ids("e", np.arange(start, stop), self.event_id_width),
            "user_id": A.prefixed_ids("u", user, self.user_id_width),
            "video_id": A.prefixed_ids("v", video, self.video_id_width),
            "event_type": A.take_strings(event_types, etype),
            "ts": pa.array(ts_ms, pa.timestamp("ms", tz="UTC")),
            "day": pa.array(day.astype(np.int32), pa.date32()),
            "watch_time_s": pa.array(watch, mask=~is_view),
            "campaign_id": _masked(A.prefixed_ids("c", campaign + 1, 4), ~is_ad),
            "revenue_usd": pa.array(revenue, mask=~is_ad),
            "age_band": A.take_strings(self.age_bands, us["band"][user]),
            "region": A.take_strings(self.regions, us["region"][user]),
            "device_id": device,
        }


def _masked(values: pa.Array, null: np.ndarray) -> pa.Array:
    """``values`` with nulls where ``null`` is true."""
    return pc.if_else(pa.array(null), pa.scalar(None, values.type), values)
