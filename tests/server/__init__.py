"""Tests of unhardcoded.server."""
