"""Policies (`sigma-pol/v1`): the typed model, validation against a catalog, canonical form and fingerprint."""

from .load import budget_problems, load_policy, load_policy_file, validate_policy
from .model import OPS, POLICY_SCHEMA, Budget, Fallback, Policy, Rank, RankKey, Rule, Select, fingerprint_of

__all__ = [
    "OPS",
    "POLICY_SCHEMA",
    "Budget",
    "Fallback",
    "Policy",
    "Rank",
    "RankKey",
    "Rule",
    "Select",
    "budget_problems",
    "fingerprint_of",
    "load_policy",
    "load_policy_file",
    "validate_policy",
]
