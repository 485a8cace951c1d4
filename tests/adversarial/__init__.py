"""Hostile inputs: each refused with the documented 4xx, the process still serving, nothing stored, no key leaked."""
