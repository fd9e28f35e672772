"""twistd plugin: `twistd -n cc [options] [file.app|file.rel ...]` starts an ION capability container."""

from twisted.application.service import ServiceMaker

from ion.core.exception import ConfigurationError


class _ContainerServiceMaker(ServiceMaker):
    """
    Importing ion.core.cc.service reads ion.config: a bad config file is
    reported in one line, not as the traceback of the import.
    """

    @property
    def options(self):
        try:
            return super().options
        except ConfigurationError as e:
            raise SystemExit("twistd cc: %s" % (e,)) from e


CapabilityContainer = _ContainerServiceMaker(
    "ION CapabilityContainer",
    "ion.core.cc.service",
    "ION Capability Container",
    "cc",
)
