"""Price schedules from ``genai-prices`` data: the installed snapshot or a fetched copy of its feed.

A model is looked up by its exact ``genai-prices`` provider id and model id, never by the
package's loose matching (which resolves ``mistral-medium-3`` to ``mistral-medium-3-5``).
``genai-prices`` is imported only here, and only when a catalog needs prices resolved.
"""

from __future__ import annotations

import hashlib
import json
import urllib.request
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

from ..errors import CatalogError
from .pricing import PriceSchedule, PriceSet, Rate

SOURCE = "genai-prices"
#: Where ``genai-prices`` publishes its data (the URL its own ``UpdatePrices`` reads).
DEFAULT_FEED_URL = (
    "https://raw.githubusercontent.com/pydantic/genai-prices/refs/heads/main/prices/new_data/v2/data.json"
)
FEED_URL_ENV = "UNHARDCODED_PRICES_URL"

# genai-prices price key -> our rate key. Keys we do not carry (audio, images, web searches, 1h
# cache writes ...) are never in the usage a chat or embeddings answer reports.
_KEYS = {
    "input_mtok": "input",
    "cache_read_mtok": "cached_input",
    "cache_write_mtok": "cache_write",
    "output_mtok": "output",
    "output_reasoning_mtok": "reasoning",
    "requests_kcount": "per_request",
}


class PriceData:
    """Providers of one copy of the ``genai-prices`` data, and the version it is known by."""

    def __init__(self, providers: Sequence[Any], data_version: str, snapshot_date: str | None) -> None:
        self.providers = {p.id: p for p in providers}
        self.data_version = data_version
        self.snapshot_date = snapshot_date

    @classmethod
    def installed(cls) -> PriceData:
        """The snapshot bundled with the installed ``genai-prices`` package."""
        try:
            import genai_prices
            from genai_prices import data_snapshot
        except ImportError:  # pragma: no cover - a dependency of the package
            raise CatalogError("genai-prices is not installed; pip install genai-prices") from None
        snap = data_snapshot.get_snapshot()
        if snap.from_auto_update:
            snap = data_snapshot._bundled_snapshot()
        return cls(snap.providers, f"genai-prices {genai_prices.__version__}", None)

    @classmethod
    def from_feed_bytes(cls, body: bytes, snapshot_date: str | None, where: str = "<feed>") -> PriceData:
        """Data as the feed publishes it (a JSON array of providers); its version is a hash of the bytes."""
        from genai_prices.types import _providers_from_raw

        try:
            raw = json.loads(body)
        except ValueError as exc:
            raise CatalogError(f"{where}: price data is not JSON ({exc})") from None
        if not isinstance(raw, list):
            raise CatalogError(f"{where}: price data must be a JSON array of providers")
        try:
            providers = _providers_from_raw(raw)
        except (ValueError, TypeError, AttributeError) as exc:  # pydantic's ValidationError is a ValueError
            raise CatalogError(f"{where}: price data does not validate: {str(exc)[:300]}") from None
        digest = hashlib.sha256(body).hexdigest()[:16]
        return cls(providers, f"genai-prices data sha256:{digest}", snapshot_date)

    @classmethod
    def fetch(cls, url: str, snapshot_date: str, timeout: float = 10.0) -> PriceData:
        """The live feed at ``url``. Raises ``OSError`` when it cannot be reached."""
        req = urllib.request.Request(url, headers={"User-Agent": "unhardcoded-catalog-update"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
        return cls.from_feed_bytes(body, snapshot_date, where=url)

    def schedule(self, ref: str, where: str = "") -> PriceSchedule:
        """The schedule of ``provider/model`` (exact ids)."""
        provider_id, _, model_id = ref.partition("/")
        prefix = f"{where}: " if where else ""
        provider = self.providers.get(provider_id)
        if provider is None or not model_id:
            raise CatalogError(f"{prefix}{ref!r}: genai-prices has no provider {provider_id!r} (write provider/model)")
        for m in provider.models:
            if m.id == model_id:
                return schedule_of(m)
        raise CatalogError(f"{prefix}{ref!r}: genai-prices has no model {model_id!r} under {provider_id!r}")

    def schedules(self, refs: Iterable[tuple[str, str]]) -> dict[str, PriceSchedule]:
        return {model_id: self.schedule(ref, f"models[{model_id}]") for model_id, ref in refs}


def schedule_of(model: Any) -> PriceSchedule:
    """A ``genai_prices.types.ModelInfo``'s prices as a schedule (conditions kept)."""
    from genai_prices.types import ModelPrice, StartDateConstraint, TimeOfDateConstraint

    if isinstance(model.prices, ModelPrice):
        items: list[tuple[Any, Any]] = [(None, model.prices)]
    else:
        items = [(c.constraint, c.prices) for c in model.prices]
    entries = []
    for constraint, prices in items:
        cond: dict[str, str] | None
        if constraint is None:
            cond = None
        elif isinstance(constraint, StartDateConstraint):
            cond = {"from_date": constraint.start_date.isoformat()}
        elif isinstance(constraint, TimeOfDateConstraint):
            cond = {"from_time": _utc(constraint.start_time), "to_time": _utc(constraint.end_time)}
        else:  # pragma: no cover - a constraint type newer than this code
            raise CatalogError(f"genai-prices model {model.id!r}: unsupported price condition {constraint!r}")
        rates: dict[str, Rate] = {}
        for key, ours in _KEYS.items():
            value = getattr(prices, key, None)
            if value is not None:
                rate = _rate_of(value)
                if ours == "per_request":  # per thousand requests -> per request
                    rate = Rate(rate.base / 1000, tuple((s, p / 1000) for s, p in rate.tiers))
                rates[ours] = rate
        rates.setdefault("input", Rate(0.0))
        rates.setdefault("output", Rate(0.0))
        entries.append((cond, PriceSet(**rates)))
    return PriceSchedule(entries)


def _rate_of(value: Any) -> Rate:
    if isinstance(value, Decimal):
        return Rate(float(value))
    return Rate(float(value.base), tuple((int(t.start), float(t.price)) for t in value.tiers))


def _utc(t: Any) -> str:
    import datetime as dt

    if t.tzinfo is not None:
        t = dt.datetime.combine(dt.date(1970, 1, 1), t).astimezone(dt.UTC).time()
    return str(t.replace(tzinfo=None).isoformat())
