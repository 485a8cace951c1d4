"""The catalog field registry: built-in model fields and the types custom fields may declare."""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

FieldType = Literal["number", "integer", "bool", "string", "string[]"]
FIELD_TYPES: tuple[str, ...] = ("number", "integer", "bool", "string", "string[]")


class FieldSpec(BaseModel):
    """One field a catalog model may carry and a policy rule may test."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    type: FieldType
    unit: str | None = None
    description: str = ""
    builtin: bool = False
    required: bool = False
    live: bool = False
    """Observed by the router as it calls providers (``live.`` fields), not read from the catalog."""
    unobserved: str | None = None
    """For a live field: the value a model has while nothing was observed of it."""

    @property
    def numeric(self) -> bool:
        return self.type in ("number", "integer")


BUILTIN_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec(name="id", type="string", description="Model id, as the provider names it", builtin=True, required=True),
    FieldSpec(
        name="provider",
        type="string",
        description="Name of the provider entry that serves this model",
        builtin=True,
        required=True,
    ),
    FieldSpec(
        name="price_input_per_mtok",
        type="number",
        unit="USD/1M tokens",
        description="Price of input tokens",
        builtin=True,
        required=True,
    ),
    FieldSpec(
        name="price_output_per_mtok",
        type="number",
        unit="USD/1M tokens",
        description="Price of output tokens",
        builtin=True,
        required=True,
    ),
    FieldSpec(
        name="price_cached_input_per_mtok",
        type="number",
        unit="USD/1M tokens",
        description="Price of input tokens read from the provider's prompt cache (default: the input price)",
        builtin=True,
    ),
    FieldSpec(
        name="price_cache_write_per_mtok",
        type="number",
        unit="USD/1M tokens",
        description="Price of input tokens written to the provider's prompt cache (default: the input price)",
        builtin=True,
    ),
    FieldSpec(
        name="price_reasoning_per_mtok",
        type="number",
        unit="USD/1M tokens",
        description="Price of reasoning tokens where it differs from output (default: the output price)",
        builtin=True,
    ),
    FieldSpec(
        name="price_per_request",
        type="number",
        unit="USD",
        description="Fee charged once per request, on top of tokens",
        builtin=True,
    ),
    FieldSpec(
        name="price",
        type="string",
        description="Where the prices come from: genai-prices (with price_model) or catalog (this file's own)",
        builtin=True,
    ),
    FieldSpec(
        name="price_model",
        type="string",
        description="The genai-prices provider/model id the prices are taken from (exact, no loose matching)",
        builtin=True,
    ),
    FieldSpec(
        name="price_overrides",
        type="string[]",
        description="Price fields this catalog sets itself over the genai-prices values",
        builtin=True,
    ),
    FieldSpec(
        name="kind",
        type="string",
        description="What the model does: chat (the default) or embedding",
        builtin=True,
    ),
    FieldSpec(
        name="bench_intelligence",
        type="number",
        unit="0..1",
        description="Normalized benchmark score of general capability",
        builtin=True,
    ),
    FieldSpec(name="supports_tools", type="bool", description="Accepts tool/function definitions", builtin=True),
    FieldSpec(name="supports_vision", type="bool", description="Accepts image inputs", builtin=True),
    FieldSpec(
        name="context_window",
        type="integer",
        unit="tokens",
        description="Maximum input plus output tokens",
        builtin=True,
    ),
    FieldSpec(
        name="max_output_tokens",
        type="integer",
        unit="tokens",
        description="Maximum tokens in one answer",
        builtin=True,
    ),
    FieldSpec(name="regions", type="string[]", description="Regions where the model is served", builtin=True),
    FieldSpec(
        name="latency_p50_ms", type="number", unit="ms", description="Median time to a full short answer", builtin=True
    ),
)
BUILTIN_FIELD_NAMES = frozenset(f.name for f in BUILTIN_FIELDS)
MODEL_KINDS: tuple[str, ...] = ("chat", "embedding")
"""The values of the ``kind`` field; a model without one is ``chat``."""

LIVE_PREFIX = "live."


def _live(name: str, type_: FieldType, unit: str | None, description: str, unobserved: str) -> FieldSpec:
    return FieldSpec(
        name=LIVE_PREFIX + name, type=type_, unit=unit, description=description, live=True, unobserved=unobserved
    )


LIVE_FIELDS: tuple[FieldSpec, ...] = (
    _live(
        "latency_p50_ms",
        "number",
        "ms",
        "Median latency of the model's last 64 successful calls",
        "the catalog's latency_p50_ms (unset if the catalog has none)",
    ),
    _live("error_rate", "number", "0..1", "Share of the model's calls that failed in the last 60 s", "0"),
    _live("consecutive_failures", "integer", "{call}", "Failed calls to the model since its last success", "0"),
    _live("cooldown", "bool", None, "The model is cooled down (circuit open, or its probe under way)", "false"),
    _live("in_flight", "integer", "{call}", "Calls to the model under way in this router", "0"),
    _live(
        "ratelimit_remaining_requests",
        "integer",
        "{request}",
        "Requests left before the provider's reset, best of the model's keys (x-ratelimit-remaining-requests, "
        "anthropic-ratelimit-requests-remaining)",
        "unset: a rule on it passes a model whose provider never reported headroom",
    ),
    _live(
        "ratelimit_remaining_tokens",
        "integer",
        "tokens",
        "Tokens left before the provider's reset, best of the model's keys (x-ratelimit-remaining-tokens, "
        "anthropic-ratelimit-tokens-remaining)",
        "unset: a rule on it passes a model whose provider never reported headroom",
    ),
)
LIVE_FIELD_NAMES = frozenset(f.name for f in LIVE_FIELDS)


def value_matches(spec_type: str, value: Any) -> bool:
    """Whether ``value`` is of the catalog field type ``spec_type``."""
    if spec_type == "number":
        # NaN and infinities have no canonical JSON form: they would break fingerprints and catalog versions.
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and math.isfinite(value)
        )
    if spec_type == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
    if spec_type == "bool":
        return isinstance(value, bool)
    if spec_type == "string":
        return isinstance(value, str)
    if spec_type == "string[]":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return False


def describe_value(value: Any) -> str:
    """A short, quoted rendering of a value for error messages."""
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else repr(value[:57] + "...")
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def suggest(name: str, known: Iterable[str]) -> str:
    """`; did you mean a, b?` for a misspelt name, or an empty string."""
    close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""
