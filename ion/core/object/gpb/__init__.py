"""Generated from res/proto by `python tools/make_protos.py`; do not edit."""

MODULES = (
    "ion.core.object.gpb.net.ooici.core.container.container_pb2",
    "ion.core.object.gpb.net.ooici.core.link.link_pb2",
    "ion.core.object.gpb.net.ooici.core.message.ion_message_pb2",
    "ion.core.object.gpb.net.ooici.core.type.type_pb2",
    "ion.core.object.gpb.net.ooici.services.dm.event_pb2",
    "ion.core.object.gpb.net.ooici.services.dm.eventmonitor_pb2",
    "ion.core.object.gpb.net.ooici.services.sa.instruments_pb2",
)
