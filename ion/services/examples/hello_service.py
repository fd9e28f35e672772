"""A small demo service: `hello` greets, `fail` and `crash` show the two kinds of error reply."""

from ion.core.exception import ApplicationError
from ion.core.process.process import ProcessFactory
from ion.core.process.service_process import ServiceClient, ServiceProcess


class HelloService(ServiceProcess):
    declare = ServiceProcess.service_declare(name="hello", version="0.1.0", dependencies=[])

    def op_hello(self, content, headers, msg):
        name = content.get("name", "world") if isinstance(content, dict) else "world"
        return self.reply_ok(msg, {"greeting": "Hello, %s!" % (name,), "by": self.id.full})

    def op_fail(self, content, headers, msg):
        raise ApplicationError("hello cannot do that: %r" % (content,), 400)

    def op_crash(self, content, headers, msg):
        raise RuntimeError("hello crashed on purpose")


class HelloServiceClient(ServiceClient):
    def __init__(self, proc=None, **kwargs):
        kwargs.setdefault("targetname", "hello")
        super().__init__(proc=proc, **kwargs)

    def hello(self, name):
        return self.rpc_send("hello", {"name": name})


factory = ProcessFactory(HelloService)
