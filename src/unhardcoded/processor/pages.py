"""Receipt and workflow pages of the processor: the console's pages (``unhardcoded.receipts.console``), which the
proxy serves too."""

from __future__ import annotations

from ..receipts.console import CONFLICTS_SHOWN, not_found, receipt_page, workflow_page

__all__ = ["CONFLICTS_SHOWN", "not_found", "receipt_page", "workflow_page"]
