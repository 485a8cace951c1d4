"""Tests of unhardcoded.telemetry."""
