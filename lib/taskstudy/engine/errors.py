"""Error types that the command line reports as one line, importable without torch."""

from __future__ import annotations


class RealDataError(ValueError):
    """A real-data root, folder or file is missing, unreadable or inconsistent."""
