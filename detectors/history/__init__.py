"""Stored history read back (``recp savings influx:...``, ``recp baseline fit``): one
interface, a backend per database (``influx.flavor`` of the analytics file)."""

from .base import History, HistoryError, Row
from .choose import open_history

__all__ = ["History", "HistoryError", "Row", "open_history"]
