"""Tests of unhardcoded.semconv."""
