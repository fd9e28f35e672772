"""
Exceptions shared across the container (names as in ION R1).

Every exception the project defines derives from IonError, R1's
FatalError and ProcessError too (R1 derived them from Exception directly;
they still are Exceptions).  A class that R1 (or an earlier version here)
raised as a builtin keeps that builtin as a second base, so
``except ValueError`` or ``except AssertionError`` still catches it.  This module imports nothing from the project: every floor may
import it.
"""


class IonError(Exception):
    """Base of the project's own errors."""


class ConfigurationError(IonError, ValueError):
    """A configuration, app, release or option value is wrong; the message names it."""


class StartupError(IonError):
    """Something the container or an app needs at startup is missing."""


class IllegalStateError(IonError):
    """An object was asked something it cannot do in its current state."""


class IllegalStateChange(IllegalStateError, RuntimeError):
    """A lifecycle object got an input its state has no transition for (R1: RuntimeError)."""


class UsageError(IonError, AssertionError):
    """An API was called without something it needs, or with a value it cannot take (R1 asserted these)."""


class FatalError(IonError):
    """The container cannot go on."""


class ProcessError(IonError):
    """A process was asked something it cannot do in its state."""


class ApplicationError(IonError):
    """
    Raised by an operation to answer its caller with an error reply.

    `response_code` (400..499 for the caller's fault, 500..599 for ours)
    travels back in the reply's IonMsg.  Without one it is 500, as in R1, so
    the caller gets ReceivedContainerError.
    """

    def __init__(self, reason, response_code=500):
        super().__init__(reason)
        self.response_code = response_code


class ReceivedError(IonError):
    """An RPC was answered with status ERROR."""

    def __init__(self, headers, content, response_code=None, reason=None):
        self.headers = headers
        self.content = content
        self.response_code = response_code
        self.reason = reason
        super().__init__("%s (response code %s)" % (reason or "error reply", response_code))

    @property
    def msg_content(self):
        """R1 name for the reply content."""
        return self.content

    @property
    def msg_headers(self):
        """R1 name for the reply's headers."""
        return self.headers


class ReceivedApplicationError(ReceivedError):
    """Error reply with a 4xx response code: the request was wrong."""


class ReceivedContainerError(ReceivedError):
    """Error reply with a 5xx response code: the receiver failed."""


class NoSuchService(IonError):
    """An RPC's request came back from the broker: no queue, so no service, takes its recipient."""
