"""Hostile and careless inputs, each run through the real CLI (issue 14)."""
