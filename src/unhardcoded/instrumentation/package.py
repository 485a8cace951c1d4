"""What the instrumentation instruments: the ``openai`` client, the ``anthropic`` client, or both.

Either one is enough, so neither is required of all installs (``instrumentation_dependencies()`` is empty);
``opentelemetry-instrument`` reads the same alternatives from the ``instruments-any`` extra of pyproject.toml.
"""

_instruments: tuple[str, ...] = ()
_instruments_any = ("openai >= 1.0", "anthropic >= 0.40")
