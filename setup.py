"""ioncore-python 3: the ION R1 capability container and event notification, on Python 3."""

import os

from setuptools import Extension, find_packages, setup


def resource_files():
    """Everything under res/, installed to share/ioncore-python/res/... (found by ion.core.resources)."""
    found = {}
    for folder, _dirs, files in os.walk("res"):
        names = [os.path.join(folder, f) for f in files if not f.endswith((".pyc", "local.config"))]
        if names:
            found[os.path.join("share", "ioncore-python", folder)] = names
    return sorted(found.items())


setup(
    name="ioncore-python",
    version="1.1.5.post3",
    description="ION R1 capability container and event notification as a Twisted plugin",
    long_description=open("README.txt").read(),
    python_requires=">=3.11",
    # The twistd plugin is twisted/plugins/cc.py: Twisted finds plugins only in a `twisted/plugins`
    # directory (without __init__.py) under a sys.path entry.  `pip install .` copies it into
    # site-packages/twisted/plugins.  For `pip install -e .`, package_dir {"": "."} makes setuptools
    # put this checkout itself on sys.path (a static .pth; its default import hook for a layout without
    # package_dir maps `twisted.plugins` for imports only, which Twisted's plugin scan never sees).
    package_dir={"": "."},
    packages=find_packages(include=["ion", "ion.*"]) + ["twisted.plugins"],
    package_data={"twisted.plugins": ["cc.py"]},
    data_files=resource_files(),
    # The wire format's hot loops in C (ion/core/object/speedups.py); optional: without a compiler or
    # OpenSSL's headers the install goes on and the same work is done in Python, more slowly.
    # A top-level module: found wherever pip put it, also when `ion` is imported from this checkout.
    ext_modules=[Extension("_ioncore_speedups", ["ion/core/object/_speedups.c"], libraries=["crypto"],
                           extra_compile_args=["-O2"], optional=True)],
    install_requires=[
        "twisted>=24.3",
        "txamqp==0.8.2",
        "protobuf>=5.27,<8",
        "msgpack>=1.0",
        "zope.interface",
        "prometheus_client>=0.17",
    ],
    extras_require={
        "pg": ["psycopg[binary]>=3.1"],
        "test": ["hypothesis>=6", "pika>=1.3", "pexpect>=4.8", "pyOpenSSL", "service_identity", "pamqp>=3.2", "grpcio-tools",
                 "selenium>=4.10", "psycopg[binary]>=3.1"],
        "tls": ["pyOpenSSL", "service_identity"],
    },
    entry_points={"console_scripts": ["ion-events = ion.core.cc.ion_events_command:main"]},
    zip_safe=False,
)
