"""Exceptions shared across the container (names as in ION R1)."""


class IonError(Exception):
    """Base of the project's own errors."""


class ConfigurationError(IonError, ValueError):
    """A configuration, app, release or option value is wrong; the message names it."""


class FatalError(IonError):
    """The container cannot go on."""


class ApplicationError(IonError):
    """
    Raised by an operation to answer its caller with an error reply.

    `response_code` (400..499 for the caller's fault, 500..599 for ours)
    travels back in the reply's IonMsg.
    """

    def __init__(self, reason, response_code=400):
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


class ReceivedApplicationError(ReceivedError):
    """Error reply with a 4xx response code: the request was wrong."""


class ReceivedContainerError(ReceivedError):
    """Error reply with a 5xx response code: the receiver failed."""


class NoSuchService(IonError):
    """An RPC's request came back from the broker: no queue, so no service, takes its recipient."""
