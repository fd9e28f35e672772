"""Naming helpers shared by receivers and processes (R1 §4.1)."""

from ion.core import ioninit
from ion.core.id import Id


def get_scoped_name(name, scope):
    """'local' -> <container id>.<name>, 'system' -> <sys_name>.<name>, 'global' -> name."""
    if scope == "global":
        return name
    if scope == "local":
        return "%s.%s" % (ioninit.container_id(), name)
    if scope == "system":
        return "%s.%s" % (ioninit.sys_name, name)
    raise RuntimeError("unknown scope %r (expected 'local', 'system' or 'global')" % (scope,))


def get_process_id(text):
    """An Id from its full string form."""
    return Id.parse(text)
