"""
The debug manhole (R1's "telnet shell", §7.5): the shell's namespace over
telnet, for a container with no terminal.

R1 listened on every interface with no password.  This one listens on
127.0.0.1 only and writes its port to `./.ccdebugport-<pid>` with mode 0600
(removed when it stops).  It still has no password, and any local user can
connect to a loopback port, so it is off unless ion.config turns it on
(`ion.core.cc.service`: `'debug_manhole': True`); --no_dbmanhole keeps it off.
"""

import os

from twisted.conch.insults.insults import ServerProtocol
from twisted.conch.manhole import ColoredManhole
from twisted.conch.telnet import TelnetBootstrapProtocol, TelnetTransport
from twisted.internet import defer, protocol

LOOPBACK = "127.0.0.1"


def port_file_name(pid=None):
    return ".ccdebugport-%d" % (pid or os.getpid(),)


class DebugManhole:
    """listen() opens the loopback port and writes the port file; stop() closes both."""

    def __init__(self, namespace, directory="."):
        self.namespace = namespace
        self.path = os.path.join(directory, port_file_name())
        self.port = None

    def listen(self, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        factory = protocol.ServerFactory()
        factory.protocol = lambda: TelnetTransport(TelnetBootstrapProtocol, ServerProtocol, ColoredManhole, self.namespace)
        self.port = reactor.listenTCP(0, factory, interface=LOOPBACK)
        number = self.port.getHost().port
        descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(descriptor, 0o600)  # an older file of this name may have had another mode
        with os.fdopen(descriptor, "w") as f:
            f.write("%d\n" % (number,))
        return number

    def stop(self):
        if self.port is None:
            return defer.succeed(None)
        port, self.port = self.port, None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        return defer.maybeDeferred(port.stopListening)
