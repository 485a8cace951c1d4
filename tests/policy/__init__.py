"""Tests of unhardcoded.policy."""
