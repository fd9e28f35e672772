"""Naming helpers shared by receivers and processes (R1 §4.1)."""

from ion.core.id import Id
from ion.core.messaging.names import get_scoped_name

__all__ = ["get_process_id", "get_scoped_name"]


def get_process_id(text):
    """An Id from its full string form."""
    return Id.parse(text)
