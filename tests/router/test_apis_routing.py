"""The router for every API: attempt spans named by operation, receipts rebuilt with the request's API and kind,
and chat features that read exactly as before."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from unhardcoded.catalog import Catalog
from unhardcoded.policy import Policy
from unhardcoded.router.features import (
    RequestFeatures,
    features_from_embeddings,
    features_from_request,
    features_from_responses,
)
from unhardcoded.router.providers import ProviderClient, ProvidersConfig
from unhardcoded.semconv import gen_ai as G
from unhardcoded.testing import TelemetryCapture
from unhardcoded.testing.simulator import SimulatedProvider

CATALOG = Catalog.from_document(
    {
        "schema": "unhardcoded-catalog/v1",
        "models": [
            {"id": "chat-1", "provider": "p", "price_input_per_mtok": 1.0, "price_output_per_mtok": 2.0},
            {"id": "chat-2", "provider": "q", "price_input_per_mtok": 2.0, "price_output_per_mtok": 2.0},
            {"id": "chat-3", "provider": "p", "price_input_per_mtok": 3.0, "price_output_per_mtok": 2.0},
            {"id": "emb-1", "provider": "p", "kind": "embedding", "price_input_per_mtok": 0.1,
             "price_output_per_mtok": 0.0},
        ],
    }
)  # fmt: skip
POLICY = Policy.model_validate(
    {
        "schema": "sigma-pol/v1",
        "name": "all",
        "rank": {"by": "cost", "order": "asc"},
        "fallback": {"models": ["chat-2", "chat-3"]},
    }
)


def test_chat_features_read_as_before() -> None:
    features = features_from_request({"messages": [{"role": "user", "content": "hi"}]})
    assert features.api == "chat_completions" and features.kind == "chat"
    assert "api" not in features.canonical() and "kind" not in features.canonical()
    assert RequestFeatures.model_validate_json(features.canonical()) == features
    emb = features_from_embeddings({"input": ["a", "bb"]})
    assert RequestFeatures.model_validate_json(emb.canonical()) == emb and emb.output_tokens == 0


def test_embeddings_attempt_span_and_rebuilt_receipt(
    simulated_provider: Callable[..., SimulatedProvider], tel: TelemetryCapture
) -> None:
    sim = simulated_provider("p")
    config = sim.provider_config()
    client = ProviderClient(
        ProvidersConfig(providers=[config.model_copy(update={"apis": ["chat_completions", "embeddings"]})])
    )
    router = tel.router(CATALOG, client)
    body: dict[str, Any] = {"input": "a parcel"}

    async def go() -> Any:
        try:
            return await router.aroute(POLICY, body, features=features_from_embeddings(body))
        finally:
            await client.aclose()

    decision, result, error = asyncio.run(go())
    assert error is None and result is not None and decision.answered_by == "emb-1"
    assert [r.rule for r in decision.rejected] == ["request:kind"] * 3
    (attempt,) = tel.attempts()
    assert attempt.name == "embeddings emb-1"
    assert attempt.attributes[G.GEN_AI_OPERATION_NAME] == "embeddings"  # type: ignore[index]
    (receipt,) = tel.receipts()
    assert receipt.features is not None and receipt.features.kind == "embedding"
    assert receipt.features.api == "embeddings"
    assert sim.requests[-1].path == "/v1/embeddings"


def test_stateful_responses_never_fall_back_to_another_provider() -> None:
    compiled_catalog_unservable = frozenset({"q"})
    from unhardcoded.router.engine import CompiledPolicy

    compiled = CompiledPolicy(POLICY, CATALOG)
    plain = features_from_responses({"input": "hi"})
    stateful = features_from_responses({"input": "hi", "previous_response_id": "resp_1"})
    assert stateful.stateful and not plain.stateful
    decision = compiled.decide(plain)
    assert decision.selected is not None and decision.selected.model == "chat-1"
    assert decision.fallback_chain == ["chat-2", "chat-3"]
    # both providers speak the Responses API: chat-2 passes, but its provider does not hold the state
    pinned = compiled.decide(stateful)
    assert pinned.fallback_chain == ["chat-3"]
    assert {r.model: r.rule for r in pinned.rejected} == {"emb-1": "request:kind"}
    # q does not: its model is rejected by request:api, on the receipt
    pinned = compiled.decide(stateful, unservable=compiled_catalog_unservable)
    assert pinned.fallback_chain == ["chat-3"]
    assert {r.model: r.rule for r in pinned.rejected} == {"chat-2": "request:api", "emb-1": "request:kind"}
