"""The OpenAI-compatible router proxy: ``create_app`` builds the ASGI app that ``unhardcoded serve`` runs."""

from .app import RecentDecisions, create_app
from .errors import APIError
from .policies import PolicyDirectory, PolicyResolver

__all__ = ["APIError", "PolicyDirectory", "PolicyResolver", "RecentDecisions", "create_app"]
