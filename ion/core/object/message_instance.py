"""
Message instances: an IonMsg root whose content object's fields read as the instance's own.

They belong to the object layer: the codec turns a received IonMsg graph back
into one, and `ion.core.messaging.message_client` makes new ones for processes.
"""

import functools

from ion.core.object.gpb.net.ooici.core.message import ion_message_pb2
from ion.core.object.gpb_wrapper import enum_object
from ion.core.object.object_utils import create_type_identifier
from ion.core.object.repository import Repository

ION_MESSAGE_TYPE = create_type_identifier(object_id=11, version=1)


def new_message_instance(content_type, name=""):
    """A fresh repository holding an IonMsg (identity = the repository key) and its content object."""
    repository = Repository()
    message = repository.create_object(ION_MESSAGE_TYPE)
    message.identity = repository.key
    if name:
        message.name = name
    if content_type is not None:
        message.message_object = repository.create_object(content_type)
    return MessageInstance.wrap(message)


class MessageInstance:
    """An IonMsg wrapper presenting its content: `msg.origin` is `msg.MessageObject.origin`."""

    # An instance made by `later` has no _message/_content until first used: __getattr__ then makes them.
    __slots__ = ("_message", "_content", "_make")

    ResponseCodes = enum_object(ion_message_pb2.DESCRIPTOR.enum_types_by_name["ResponseCodes"])
    _Properties = {}
    _Enums = {}
    _ContentType = None  # the content's type, in the class of each content type (_instance_class)

    def __init__(self, message, content=None):
        self._message = message
        self._content = message.message_object if content is None else content
        self._make = None

    @staticmethod
    def wrap(message):
        """The MessageInstance for an IonMsg wrapper, of the class that matches its content type."""
        content = message.message_object  # a link followed: looked up once, for the class and the instance
        return _instance_class(content and type(content))(message, content)

    @staticmethod
    def later(content_class, make):
        """
        The MessageInstance of the IonMsg wrapper `make()` returns, made when the instance is first used.
        For a sender that has the message's bytes already (event_plan) and whose caller may never look:
        the instance is of the class `wrap` would give for `content_class` content and reads the same.
        """
        instance = object.__new__(_instance_class(content_class))
        instance._make = make
        return instance

    def __getattr__(self, name):
        # Python calls this only when the usual lookup fails: an instance `later` made is being used for the first time.
        if name in ("_message", "_content") and self._make is not None:
            message, self._make = self._make(), None
            self._message, self._content = message, message.message_object
            return getattr(self, name)
        raise AttributeError("%r object has no attribute %r" % (type(self).__name__, name), name=name, obj=self)

    @property
    def Repository(self):
        return self._message.Repository

    @property
    def Message(self):
        return self._message

    @property
    def MessageObject(self):
        return self._content

    @property
    def MessageType(self):
        # Known from the class (without making an instance from `later`), as the content is of that class.
        return self._ContentType or (self._content and self._content.ObjectType)

    @property
    def MessageIdentity(self):
        return self._message.identity

    @property
    def MessageName(self):
        return self._message.name

    @MessageName.setter
    def MessageName(self, value):
        self._message.name = value

    @property
    def MessageResponseCode(self):
        return self._message.response_code

    @MessageResponseCode.setter
    def MessageResponseCode(self, value):
        self._message.response_code = value

    @property
    def MessageResponseBody(self):
        return self._message.response_body

    @MessageResponseBody.setter
    def MessageResponseBody(self, value):
        self._message.response_body = value

    def CreateObject(self, type_id):
        """A new object in this message's repository, to be linked into the content."""
        return self.Repository.create_object(type_id)

    def IsFieldSet(self, name):
        return self._content.IsFieldSet(name)

    def ListSetFields(self):
        return self._content.ListSetFields()

    def ClearField(self, name):
        self._content.ClearField(name)

    def __repr__(self):
        return "<MessageInstance %r content=%r>" % (self._message, self._content)


def _delegate(name):
    return property(
        lambda self: getattr(self._content, name),
        lambda self, value: setattr(self._content, name, value),
    )


@functools.cache
def _instance_class(content_class):
    """MessageInstance subclass exposing one content wrapper class's fields and enums."""
    if content_class is None:
        return MessageInstance
    namespace = {
        "__slots__": (),
        "_Properties": content_class._Properties,
        "_Enums": content_class._Enums,
        "_ContentType": content_class.ObjectType,
        **content_class._Enums,
    }
    namespace.update((name, _delegate(name)) for name in content_class._Properties)
    return type(content_class.__name__ + "Instance", (MessageInstance,), namespace)
