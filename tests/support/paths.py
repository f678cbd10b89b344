"""Paths in this checkout that tests read: the repository root and the agent's fixture trees."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "agent" / "fixtures"
