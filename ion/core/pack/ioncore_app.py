"""The ioncore application every container starts first: applies the container args."""

from ion.core import bootstrap


def start(container, starttype, app_definition, *args, **kwargs):
    bootstrap.init_ioncore()
    return (None, None)


def stop(container, state):
    pass
