"""What the instrumentation instruments; ``opentelemetry-instrument`` checks it before loading us."""

_instruments = ("openai >= 1.0",)
