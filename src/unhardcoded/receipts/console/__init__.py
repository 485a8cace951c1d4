"""The receipts console: receipt list and search, rollup charts, receipt and workflow pages, sign-in.

Pages are built here, over any :class:`~unhardcoded.receipts.stores.ReceiptStore`, as HTML strings (Jinja2 with
autoescape); the receipts processor serves them at ``/ui/`` and the proxy at ``/x/ui/``, each with its own
:class:`ConsoleLinks`. Nothing here speaks HTTP.
"""

from __future__ import annotations

from .filters import ConsoleFilter, FilterError, read_filter
from .pages import (
    CONFLICTS_SHOWN,
    ConsoleLinks,
    Page,
    error_page,
    listing_page,
    not_found,
    receipt_page,
    rollups_csv,
    rollups_page,
    search,
    sign_in_page,
    workflow_page,
)

__all__ = [
    "CONFLICTS_SHOWN",
    "ConsoleFilter",
    "ConsoleLinks",
    "FilterError",
    "Page",
    "error_page",
    "listing_page",
    "not_found",
    "read_filter",
    "receipt_page",
    "rollups_csv",
    "rollups_page",
    "search",
    "sign_in_page",
    "workflow_page",
]
