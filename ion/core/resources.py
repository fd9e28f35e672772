"""
Finding files under res/ whether running from a checkout or an installed package.

A relative path is tried against the current directory first (so a project can
shadow any resource), then the source tree this package sits in, then the
data directory pip installed res/ into.
"""

import os
import sys
import sysconfig

_SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_INSTALLED_ROOT = os.path.join(sysconfig.get_path("data"), "share", "ioncore-python")


def search_roots():
    return [os.getcwd(), _SOURCE_ROOT, _INSTALLED_ROOT, os.path.join(sys.prefix, "share", "ioncore-python")]


def resource_path(path):
    """Absolute path of `path` (e.g. 'res/config/ion.config'); the first existing candidate, else cwd-relative."""
    if os.path.isabs(path):
        return path
    for root in search_roots():
        candidate = os.path.join(root, path)
        if os.path.exists(candidate):
            return candidate
    return os.path.abspath(path)
