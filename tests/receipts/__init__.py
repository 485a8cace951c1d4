"""Tests of unhardcoded.receipts."""
