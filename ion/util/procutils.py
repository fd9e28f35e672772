"""
R1's grab bag of process utilities, `import ion.util.procutils as pu` (§12.1).

The naming helpers live in `ion.core.messaging.names`; this module gives
them, and the rest R1 user code calls, under R1's path and signatures.
"""

import contextlib
import io
import itertools
import os
import pprint
import resource
import time
import uuid
from collections import defaultdict

from twisted.internet import defer
from twisted.logger import Logger

from ion.core.id import Id
from ion.core.messaging import names as _naming

log = Logger()


def asleep(secs, clock=None):
    """
    A Deferred that fires with None after `secs` seconds on `clock` (an
    IReactorTime, the reactor by default); cancelling it cancels the timer.
    """
    if clock is None:
        from twisted.internet import reactor as clock
    d = defer.Deferred(lambda _: timer.cancel())
    timer = clock.callLater(secs, d.callback, None)
    return d


def create_guid():
    """A new random id, upper-case hex with dashes."""
    return str(uuid.uuid4()).upper()


_unique_counters = defaultdict(lambda: itertools.count(1))


def create_unique_id(ns):
    """`ns` followed by that namespace's next number from 1 (None: the namespace ':')."""
    ns = ":" if ns is None else str(ns)
    return "%s%d" % (ns, next(_unique_counters[ns]))


def get_process_id(long_id):
    """None -> None; `<container>.<local>` -> Id(local, container); no dot -> Id(long_id)."""
    if long_id is None:
        return None
    container, dot, local = str(long_id).rpartition(".")
    return Id(local, container) if dot else Id(long_id)


def get_scoped_name(name, scope):
    """'local' -> <container id>.<name>, 'system' -> <sys_name>.<name>, 'global' -> name."""
    return _naming.get_scoped_name(name, scope)


def get_module(qualname):
    """The module `qualname` (ImportError if there is none)."""
    return __import__(qualname, fromlist=[qualname.rpartition(".")[2]])


def get_class(qualclassname, mod=None):
    """The class named `pkg.mod.Class`, or the bare `Class` in module object `mod`."""
    if mod is None:
        module_name, _, class_name = qualclassname.rpartition(".")
        mod = get_module(module_name)
    else:
        class_name = qualclassname
    try:
        return getattr(mod, class_name)
    except AttributeError:
        raise ImportError("module %s has no class %s" % (mod.__name__, class_name)) from None


def currenttime():
    """Seconds since the epoch, as a float."""
    return time.time()


def currenttime_ms():
    """Milliseconds since the epoch, as an int."""
    return int(time.time() * 1000)


def isnan(x):
    return str(float(x)).lower() == "nan"


def pprint_to_string(obj):
    return pprint.pformat(obj)


def capture_function_stdout(func, *args, **kwargs):
    """What `func(*args, **kwargs)` prints to stdout, as a string."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        func(*args, **kwargs)
    return out.getvalue()


def get_last_or_default(alist, default=None):
    return alist[-1] if alist else default


def get_ion_path(filename):
    """`filename` found in the current directory or one of its ancestors; IOError if in none."""
    directory = os.getcwd()
    while True:
        candidate = os.path.join(directory, filename)
        if os.path.exists(candidate):
            return candidate
        parent = os.path.dirname(directory)
        if parent == directory:
            raise IOError("%s not found in %s or above" % (filename, os.getcwd()))
        directory = parent


def log_attributes(obj):
    """Log (at debug) each attribute of `obj`."""
    for name, value in sorted(vars(obj).items()):
        log.debug("{obj!r}.{name} = {value!r}", obj=obj, name=name, value=value)


def log_message(msg):
    """Log (at debug) the headers of a received message."""
    payload = getattr(msg, "payload", msg)
    log.debug("Message: {headers}", headers=pprint.pformat({k: v for k, v in payload.items() if k != "content"}))


def print_memory_usage():
    """Log (at info) this process's peak resident memory."""
    log.info("Peak memory: {kib} KiB", kib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
