"""Tests of unhardcoded.processor."""
