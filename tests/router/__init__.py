"""Tests of unhardcoded.router."""
