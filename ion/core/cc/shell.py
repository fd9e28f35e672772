"""
The container's interactive shell on the terminal (R1 §7.5): a Twisted
Conch manhole over stdin/stdout with the shell_api namespace.

It starts only when stdin and stdout are both terminals: under CI, a pipe or
a daemon nothing is read and nothing blocks.  Ctrl-D leaves the shell and
gives the terminal back (so Ctrl-C sends SIGINT again, which stops the
container); stdout stays open for the log.  Output processing stays on while
the terminal is raw, so log lines printed meanwhile start at the left margin.
"""

import os
import termios
import tty

from twisted.conch.insults.insults import ServerProtocol
from twisted.conch.manhole import ColoredManhole
from twisted.internet import stdio

# The descriptors themselves: under twistd sys.stdout is a logging file with no descriptor.
STDIN, STDOUT = 0, 1
HISTORY_FILE = "~/.cchistory"
HISTORY_LINES = 2500
PROMPT_APPENDING = b"><> "
PROMPT_NOT_APPENDING = b"--> "
CTRL_A, CTRL_E, CTRL_Q = b"\x01", b"\x05", b"\x11"


class History:
    """The lines of ~/.cchistory: read at start, each new line appended, cut to the last 2500 at exit."""

    def __init__(self, path, limit=HISTORY_LINES):
        self.path = os.path.expanduser(path)
        self.limit = limit

    def read(self):
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                return [line.rstrip("\n").encode("utf-8") for line in f][-self.limit:]
        except FileNotFoundError:
            return []

    def append(self, line):
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def trim(self):
        lines = self.read()
        with open(self.path, "w", encoding="utf-8") as f:
            f.writelines(line.decode("utf-8") + "\n" for line in lines)


class ContainerManhole(ColoredManhole):
    """
    The manhole with R1's keys and prompts: `><> ` while history is appended,
    `--> ` when not (Ctrl-Q toggles), Ctrl-A/Ctrl-E, `expr?` for help on an
    object.  `history` (a History or None) and `on_quit` are set by the factory.
    """

    history = None
    on_quit = None
    banner = ""

    def connectionMade(self):
        self.appending = self.history is not None
        self.ps = (self._prompt(), b"... ")
        super().connectionMade()
        if self.history is not None:
            self.historyLines = self.history.read()
            self.historyPosition = len(self.historyLines)
        self.keyHandlers[CTRL_A] = self.handle_HOME
        self.keyHandlers[CTRL_E] = self.handle_END
        self.keyHandlers[CTRL_Q] = self.handle_TOGGLE_HISTORY

    def initializeScreen(self):
        self.terminal.write(self.banner.encode("utf-8"))  # the terminal keeps ONLCR: "\n" is enough
        self.terminal.write(self.ps[self.pn])
        self.setInsertMode()

    def _prompt(self):
        return PROMPT_APPENDING if self.appending else PROMPT_NOT_APPENDING

    def handle_TOGGLE_HISTORY(self):
        if self.history is None:
            return
        self.appending = not self.appending
        self.ps = (self._prompt(), self.ps[1])
        self.terminal.write(b"\r\n(history %s)\r\n" % (b"on" if self.appending else b"off",))
        self.drawInputLine()

    def lineReceived(self, line):
        text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        if text.strip() and self.appending:
            self.history.append(text)
        if text.rstrip().endswith("?") and not self.interpreter.buffer and text.strip() != "?":
            self._help(text.rstrip()[:-1].strip())
            self.drawInputLine()
            return
        super().lineReceived(line)

    def _help(self, expression):
        """R1's `expr?`: the name, class, type, repr and docstring of an object."""
        try:
            value = eval(expression, self.namespace)  # the user's own expression, typed at their shell
        except Exception as e:
            self.addOutput(("%s: %s\n" % (type(e).__name__, e)).encode("utf-8"))
            return
        doc = getattr(value, "__doc__", None) or "(no docstring)"
        text = "name:  %s\nclass: %s\ntype:  %s\nrepr:  %s\ndoc:   %s\n" % (
            expression, getattr(value, "__class__", type(value)).__name__, type(value), repr(value)[:500], doc.strip())
        self.addOutput(text.encode("utf-8"))

    def handle_QUIT(self):
        self.terminal.write(b"\r\nShell closed; the container keeps running (Ctrl-C or SIGTERM stops it).\r\n")
        if self.on_quit is not None:
            self.on_quit()

    def connectionLost(self, reason):
        if self.on_quit is not None:
            self.on_quit()


class TerminalShell:
    """The shell on this process's own terminal: start() puts it raw, stop() gives it back."""

    def __init__(self, namespace, banner, history=True):
        self.namespace = namespace
        self.banner = banner
        self.history = History(HISTORY_FILE) if history else None
        self.stdio = None
        self._saved = None

    @staticmethod
    def possible():
        """A shell needs a person: stdin and stdout both terminals."""
        return os.isatty(STDIN) and os.isatty(STDOUT)

    def start(self):
        fd = STDIN
        self._saved = termios.tcgetattr(fd)
        tty.setraw(fd)
        attributes = termios.tcgetattr(fd)
        attributes[1] |= termios.OPOST | termios.ONLCR  # the log's "\n" still returns to the margin
        termios.tcsetattr(fd, termios.TCSANOW, attributes)
        self.stdio = stdio.StandardIO(ServerProtocol(self._make_manhole))

    def _make_manhole(self):
        manhole = ContainerManhole(self.namespace)
        manhole.history = self.history
        manhole.banner = self.banner
        manhole.on_quit = self.stop
        return manhole

    def stop(self):
        """Stop reading the terminal and restore it; stdout stays open for the log.  Idempotent."""
        if self._saved is None:
            return
        saved, self._saved = self._saved, None
        self.stdio.stopReading()
        termios.tcsetattr(STDIN, termios.TCSANOW, saved)
        if self.history is not None:
            self.history.trim()
