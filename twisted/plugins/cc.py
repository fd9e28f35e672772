"""twistd plugin: `twistd -n cc [options] [file.app|file.rel ...]` starts an ION capability container."""

from twisted.application.service import ServiceMaker

CapabilityContainer = ServiceMaker(
    "ION CapabilityContainer",
    "ion.core.cc.service",
    "ION Capability Container",
    "cc",
)
