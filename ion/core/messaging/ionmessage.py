"""
R1's ION common message (the header map of §4.6).  It is assembled in
ion.core.messaging.envelope; the name stays importable here.
"""

from ion.core.messaging.envelope import build_message

__all__ = ["build_message"]
