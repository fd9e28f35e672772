# The demo hello service as an application.
{
    "type": "application",
    "name": "hello",
    "description": "Demo service answering hello, fail and crash",
    "version": "0.1.0",
    "mod": ("ion.core.pack.processapp", ["hello", "ion.services.examples.hello_service", "HelloService"], {}),
    "registered": ["hello"],
}
