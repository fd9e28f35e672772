"""The committed generated modules must match what tools/make_protos.py makes from res/proto now."""

import os
import subprocess
import sys
import tempfile

from twisted.trial import unittest

from ion.core.object import gpb

try:
    import grpc_tools  # noqa: F401
except ImportError:
    grpc_tools = None

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GENERATED = os.path.dirname(os.path.abspath(gpb.__file__))
VERSION_LINE = "# Protobuf Python Version:"


def python_files(top):
    """{relative path: text} of every .py file under top."""
    found = {}
    for folder, _dirs, files in os.walk(top):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path) as f:
                    found[os.path.relpath(path, top)] = f.read()
    return found


def generator_version(source):
    return next((line for line in source.splitlines() if line.startswith(VERSION_LINE)), None)


class GeneratedCodeTest(unittest.TestCase):
    def test_generated_modules_are_current(self):
        if grpc_tools is None:
            raise unittest.SkipTest("grpcio-tools is not installed, so the modules cannot be regenerated")
        with tempfile.TemporaryDirectory() as out:
            subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_protos.py"), out], check=True)
            fresh = python_files(out)
        committed = python_files(GENERATED)
        self.assertEqual(sorted(fresh), sorted(committed), "run tools/make_protos.py: the set of modules changed")
        for path, text in fresh.items():
            if generator_version(text) != generator_version(committed[path]):
                raise unittest.SkipTest(
                    "installed protoc (%s) differs from the one that generated %s (%s); compare with the same "
                    "grpcio-tools" % (generator_version(text), path, generator_version(committed[path]))
                )
            self.assertEqual(text, committed[path], "%s is stale: run python tools/make_protos.py" % path)

    def test_modules_import_without_runtime_gate(self):
        """setup.py accepts protobuf 5.27+, older than this protoc, so the version gate must be gone."""
        for path, text in python_files(GENERATED).items():
            self.assertNotIn("ValidateProtobufRuntimeVersion", text, path)
            self.assertNotIn("\nfrom net.", text, path)
