"""Tests of unhardcoded.catalog."""
