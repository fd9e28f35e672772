"""Scoped messaging names (R1 §4.1): how a receiver's name becomes its queue's."""

from ion.core import ioninit


def get_scoped_name(name, scope):
    """'local' -> <container id>.<name>, 'system' -> <sys_name>.<name>, 'global' -> name."""
    if scope == "global":
        return name
    if scope == "local":
        return "%s.%s" % (ioninit.container_id(), name)
    if scope == "system":
        return "%s.%s" % (ioninit.sys_name, name)
    raise RuntimeError("unknown scope %r (expected 'local', 'system' or 'global')" % (scope,))
