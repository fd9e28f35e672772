"""
Installing the project: `twistd --help` lists `cc` after `pip install -e .` and after `pip install .`, and the
wire format's compiled speedups are built (where this machine can build them) and found.

Each test installs this checkout into a throwaway venv, offline (--no-index, --no-deps,
--no-build-isolation), on top of the packages of the venv running the tests.  Those are seen
through a tree of symlinks without this project's own installed copy (its ion package and its
twisted/plugins/cc.py), so the plugin twistd finds can only come from the install under test.
"""

import os
import shutil
import sys
import sysconfig
import tempfile

from twisted.internet import defer
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from ion.core.object import speedups

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OWN = {"ion", "twisted"}  # this project's installed package, and twisted (rebuilt without plugins/cc.py)
PRINT_CC = (
    "import sys\n"
    "from twisted.scripts.twistd import run\n"
    "import twisted.plugins.cc as plugin\n"
    "print('PLUGIN', plugin.__file__)\n"
    "sys.argv = ['twistd', '--help']\n"
    "run()\n"
)


def _site_without_project(site, into):
    """A directory of symlinks to everything in `site` but this project's installed files."""
    os.makedirs(into)
    for name in os.listdir(site):
        if name in OWN or name.startswith(("ioncore_python", "__editable__", "_ioncore_speedups")) or name.endswith(".pth"):
            continue
        os.symlink(os.path.join(site, name), os.path.join(into, name))
    twisted_dir = os.path.join(site, "twisted")
    os.makedirs(os.path.join(into, "twisted", "plugins"))
    for name in os.listdir(twisted_dir):
        if name not in ("plugins", "__pycache__"):
            os.symlink(os.path.join(twisted_dir, name), os.path.join(into, "twisted", name))
    for name in os.listdir(os.path.join(twisted_dir, "plugins")):
        if name.endswith(".py") and name != "cc.py":
            os.symlink(os.path.join(twisted_dir, "plugins", name), os.path.join(into, "twisted", "plugins", name))


class InstallTest(unittest.TestCase):
    timeout = 180

    def setUp(self):
        if not os.path.isdir(os.path.join(sysconfig.get_path("purelib"), "pip")):
            raise unittest.SkipTest("pip is not installed in %s" % sys.prefix)
        self.work = tempfile.mkdtemp(prefix="ion-install-")
        self.addCleanup(shutil.rmtree, self.work, True)
        self.empty = os.path.join(self.work, "empty")  # the current directory: nothing importable
        os.makedirs(self.empty)

    @defer.inlineCallbacks
    def run_in(self, python, *args, cwd=None):
        env = {"PATH": os.environ.get("PATH", ""), "HOME": self.work, "PIP_DISABLE_PIP_VERSION_CHECK": "1",
               "PIP_NO_INDEX": "1"}
        out, err, code = yield getProcessOutputAndValue(python, args, env=env, path=cwd or self.empty)
        text = (out + err).decode("utf-8", "replace")
        if code:
            self.fail("%s %s exited %s:\n%s" % (python, " ".join(args), code, text[-3000:]))
        return text

    @defer.inlineCallbacks
    def venv(self):
        """A venv without pip of its own, seeing the test venv's packages (but not this project)."""
        venv = os.path.join(self.work, "venv")
        base = getattr(sys, "_base_executable", sys.executable)
        yield self.run_in(base, "-m", "venv", "--without-pip", venv)
        python = os.path.join(venv, "bin", "python")
        site = (yield self.run_in(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))")).strip()
        shared = os.path.join(self.work, "shared-site")
        _site_without_project(sysconfig.get_path("purelib"), shared)
        with open(os.path.join(site, "test_packages.pth"), "w") as f:
            f.write(shared + "\n")
        return python

    @defer.inlineCallbacks
    def install_and_ask_twistd(self, *pip_args):
        python = yield self.venv()
        yield self.run_in(python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", *pip_args)
        text = yield self.run_in(python, "-c", PRINT_CC)
        self.assertRegex(text, r"\n\s+cc\s+ION Capability Container")
        if speedups.COMPILED:  # this machine builds the extension: the install must have built it too
            for cwd in (self.empty, CHECKOUT):  # from the checkout, `ion` is the checkout's own
                compiled = yield self.run_in(python, "-c", "from ion.core.object import speedups; print(speedups.COMPILED)",
                                             cwd=cwd)
                self.assertEqual(compiled.strip(), "True", cwd)
        return text.split("PLUGIN ", 1)[1].split("\n", 1)[0]

    @defer.inlineCallbacks
    def test_editable_install_lists_cc(self):
        plugin = yield self.install_and_ask_twistd("-e", CHECKOUT)
        self.assertEqual(os.path.realpath(plugin), os.path.join(os.path.realpath(CHECKOUT), "twisted", "plugins", "cc.py"))

    @defer.inlineCallbacks
    def test_install_lists_cc(self):
        plugin = yield self.install_and_ask_twistd(CHECKOUT)
        self.assertTrue(plugin.startswith(self.work), plugin)
