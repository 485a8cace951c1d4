"""Tests of unhardcoded.instrumentation."""
