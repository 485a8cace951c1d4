"""Tests of the command line (unhardcoded.cli)."""
