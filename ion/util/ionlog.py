"""
R1's logging entry point: `log = ion.util.ionlog.getLogger(__name__)` gives
a stdlib `logging.Logger` (R1 §12.1).

Stdlib logging is routed into twisted.logger, so these lines go wherever the
container's own log goes: twistd's log, trial's test.log.  Importing this
module installs the route, and so does creating a container, so plain
`logging.getLogger(...)` calls in user code show up under twistd as well.
The stdlib root level becomes INFO (not WARNING) unless the application set
one; R1's `logs/*.log` files and `res/logging/*.cfg` level lists are not
used: the container's log is the one place to look.

An exception logged with `log.exception` keeps its traceback in the text;
it is an error line, not a Twisted Failure, so trial does not count it as
an unhandled error.
"""

import logging
import threading

from twisted.logger import Logger, LogLevel

_LEVELS = (
    (logging.CRITICAL, LogLevel.critical),
    (logging.ERROR, LogLevel.error),
    (logging.WARNING, LogLevel.warn),
    (logging.INFO, LogLevel.info),
)


def twisted_level(levelno):
    """The twisted.logger level of a stdlib level number."""
    return next((level for threshold, level in _LEVELS if levelno >= threshold), LogLevel.debug)


class TwistedLogHandler(logging.Handler):
    """Emits each stdlib record as a twisted.logger event in the record's logger's namespace."""

    def __init__(self):
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))
        self._emitting = threading.local()

    def emit(self, record):
        if getattr(self._emitting, "active", False):
            return  # an observer forwarding back into stdlib logging: do not loop
        self._emitting.active = True
        try:
            Logger(namespace=record.name).emit(
                twisted_level(record.levelno),
                "{log_text}",
                log_text=self.format(record),
                stdlib_module=record.module,
                stdlib_lineno=record.lineno,
            )
        except Exception:
            self.handleError(record)
        finally:
            self._emitting.active = False


_handler = TwistedLogHandler()


def install():
    """Route stdlib logging into twisted.logger (once; later calls do nothing)."""
    root = logging.getLogger()
    if _handler in root.handlers:
        return
    root.addHandler(_handler)
    if root.level == logging.WARNING:  # the stdlib default: nobody chose a level
        root.setLevel(logging.INFO)


class LogFactory:
    """Makes loggers and hands each the extra handlers registered here (R1 `log_factory`)."""

    def __init__(self):
        self.handlers = []
        self.loggers = {}

    def get_logger(self, loggername):
        logger = logging.getLogger(loggername)
        for handler in self.handlers:
            if handler not in logger.handlers:
                logger.addHandler(handler)
        self.loggers[loggername] = logger
        return logger

    def add_handler(self, handler):
        """Attach `handler` to every logger made so far and every one made later."""
        if handler in self.handlers:
            return
        self.handlers.append(handler)
        for logger in self.loggers.values():
            logger.addHandler(handler)

    def remove_handler(self, handler):
        if handler not in self.handlers:
            return
        self.handlers.remove(handler)
        for logger in self.loggers.values():
            logger.removeHandler(handler)


log_factory = LogFactory()


def getLogger(loggername=__name__):
    """The stdlib logger `loggername`, with the handlers registered on `log_factory`."""
    return log_factory.get_logger(loggername)


install()
