"""Rendering typed results: the JSON contract, CSV, Markdown and the Rich table."""
