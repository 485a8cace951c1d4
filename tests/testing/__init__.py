"""Tests of unhardcoded.testing."""
