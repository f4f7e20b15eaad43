"""Shared test set-up: deterministic, quiet plotting; thread count from the environment (Makefile pins 2)."""

import os

os.environ.setdefault("PLOTLY_RENDERER", "json")
