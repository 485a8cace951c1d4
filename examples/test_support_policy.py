"""Test a routing policy the way unhardcoded tests itself: a simulated provider, the real router, the receipts."""

from unhardcoded import Catalog, ProviderClient, ProvidersConfig, load_policy
from unhardcoded.testing import SimulatedProvider, TelemetryCapture, error

CATALOG = Catalog.from_document(
    {
        "schema": "unhardcoded-catalog/v1",
        "models": [
            {"id": "small", "provider": "acme", "price_input_per_mtok": 0.1, "price_output_per_mtok": 0.4,
             "bench_intelligence": 0.3},
            {"id": "medium", "provider": "acme", "price_input_per_mtok": 0.5, "price_output_per_mtok": 2,
             "bench_intelligence": 0.6},
            {"id": "large", "provider": "acme", "price_input_per_mtok": 3, "price_output_per_mtok": 15,
             "bench_intelligence": 0.9},
        ],
    }
)  # fmt: skip
POLICY = load_policy(
    """
    schema: sigma-pol/v1
    name: support
    rules:
      - {id: quality-floor, field: bench_intelligence, op: gte, value: 0.5}
    fallback: {models: [large], on: [error]}
    baseline: large
    """,
    CATALOG,
)
REQUEST = {"messages": [{"role": "user", "content": "Where is my parcel?"}]}


def test_the_cheapest_model_over_the_floor_is_picked(unhardcoded_capture: TelemetryCapture) -> None:
    decision = unhardcoded_capture.router(CATALOG).decide(POLICY, REQUEST)  # a dry run: no provider is called

    assert decision.selected is not None and decision.selected.model == "medium"
    [span] = unhardcoded_capture.decisions()
    assert span.name == "route support"
    [receipt] = unhardcoded_capture.receipts()
    assert [(r.model, r.rule) for r in receipt.rejected] == [("small", "quality-floor")]


def test_an_outage_falls_back_to_the_standby(unhardcoded_capture: TelemetryCapture) -> None:
    with (
        SimulatedProvider("acme", {"medium": error(503)}) as acme,  # "large" answers (the default behaviour)
        ProviderClient(ProvidersConfig(providers=[acme.provider_config()])) as client,
    ):
        decision, answer, failure = unhardcoded_capture.router(CATALOG, client).route(POLICY, REQUEST)

    assert failure is None and answer is not None and decision.answered_by == "large"
    [receipt] = unhardcoded_capture.receipts()
    assert receipt.fallback.triggered and [a.status for a in receipt.attempts] == ["error", "ok"]
    [fallbacks] = unhardcoded_capture.metric("unhardcoded.fallbacks").values()
    assert fallbacks == 1
