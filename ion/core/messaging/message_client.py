"""
MessageClient: how a process makes the messages it sends (R1 §6.3).

The instances themselves live in the object layer
(`ion.core.object.message_instance`); their R1 names stay importable here.
"""

from twisted.internet import defer

from ion.core.exception import IonError
from ion.core.object.message_instance import ION_MESSAGE_TYPE, MessageInstance, new_message_instance

__all__ = ["ION_MESSAGE_TYPE", "MessageClient", "MessageClientError", "MessageInstance", "new_message_instance"]


class MessageClientError(IonError):
    """A MessageClient used without a process."""


class MessageClient:
    """Creates message instances on behalf of a process."""

    def __init__(self, proc=None):
        if proc is None:
            raise MessageClientError("a MessageClient needs the process it works for")
        self.proc = proc

    def create_instance(self, MessageContentTypeID, MessageName=""):
        """Deferred firing with a new MessageInstance whose content has the given type (None: no content)."""
        return defer.maybeDeferred(new_message_instance, MessageContentTypeID, MessageName)
