"""
One exception family: every exception class defined in ion/ derives from
IonError (R1's FatalError and ProcessError, plain Exceptions in R1, too), each
name stays where R1 had it, and what R1 raised as a builtin is still that
builtin, so existing ``except AssertionError`` code keeps working.
"""

import ast
import importlib
import inspect
import pkgutil

from twisted.trial import unittest

import ion
from ion.core.exception import IllegalStateChange, IonError, UsageError
from ion.core.messaging.receiver import Receiver
from ion.services.dm.distribution.publisher_subscriber import Publisher

# None: even R1's FatalError and ProcessError (R1: plain Exceptions, reference §12.2) are IonErrors now.
OUTSIDE_IONERROR = set()

# (R1 module, name, the builtin R1 raised in its place or derived it from).
R1_NAMES = (
    ("ion.core.exception", "IonError", Exception),
    ("ion.core.exception", "ConfigurationError", ValueError),
    ("ion.core.exception", "StartupError", Exception),
    ("ion.core.exception", "IllegalStateError", Exception),
    ("ion.core.exception", "IllegalStateChange", RuntimeError),
    ("ion.core.exception", "UsageError", AssertionError),
    ("ion.core.exception", "ApplicationError", Exception),
    ("ion.core.exception", "ReceivedError", Exception),
    ("ion.core.exception", "ReceivedApplicationError", Exception),
    ("ion.core.exception", "ReceivedContainerError", Exception),
    ("ion.core.exception", "FatalError", Exception),
    ("ion.core.exception", "ProcessError", Exception),
    ("ion.util.fsm", "ExceptionFSM", Exception),
    ("ion.core.object.codec", "CodecError", Exception),
    ("ion.core.object.repository", "RepositoryError", Exception),
    ("ion.core.object.object_utils", "ObjectUtilException", Exception),
    ("ion.core.messaging.message_client", "MessageClientError", Exception),
    ("ion.core.messaging.messaging", "MessageStateError", Exception),
    ("ion.core.messaging.receiver", "ReceiverError", Exception),
    ("ion.core.messaging.serialization", "WireFormatError", ValueError),
    ("ion.services.dm.distribution.events", "UnknownEventFields", Exception),
)


def ion_exception_classes():
    """Every Exception subclass defined at module level in ion/, after importing all of ion/."""
    found = {}
    for info in pkgutil.walk_packages(ion.__path__, "ion."):
        module = importlib.import_module(info.name)
        for cls in vars(module).values():
            if inspect.isclass(cls) and issubclass(cls, Exception) and cls.__module__.startswith("ion."):
                found[(cls.__module__, cls.__qualname__)] = cls
    return found


class ExceptionFamilyTest(unittest.TestCase):
    def test_every_ion_exception_derives_from_ionerror(self):
        found = ion_exception_classes()
        self.assertGreater(len(found), 20)
        outside = {key for key, cls in found.items() if not issubclass(cls, IonError)}
        self.assertEqual(outside, OUTSIDE_IONERROR)

    def test_r1_names_at_their_paths_are_their_old_builtins(self):
        for module, name, builtin in R1_NAMES:
            cls = getattr(importlib.import_module(module), name)
            self.assertTrue(issubclass(cls, builtin), (module, name, builtin))
            if (module, name) not in OUTSIDE_IONERROR:
                self.assertTrue(issubclass(cls, IonError), (module, name))

    def test_exception_module_imports_nothing_of_the_project(self):
        """Every floor imports ion.core.exception, so it must sit below all of them."""
        import ion.core.exception as exception

        tree = ast.parse(inspect.getsource(exception))
        self.assertEqual([n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))], [])


class RaisedAsBuiltinsTest(unittest.TestCase):
    """Where R1 raised a builtin, the named error raised now still is one."""

    def test_publisher_without_exchange_point(self):
        err = self.assertRaises(AssertionError, Publisher, xp_name=None, routing_key="k", process=object())
        self.assertIsInstance(err, UsageError)
        self.assertIn("xp_name", str(err))

    def test_illegal_receiver_state_change(self):
        receiver = Receiver("nowhere")
        err = self.assertRaises(RuntimeError, receiver.activate)
        self.assertIsInstance(err, IllegalStateChange)
        self.assertEqual(str(err), "Illegal receiver state change")
