"""HTTP for the web tests: a GET that fires with (code, headers, body), and a Server-Sent Events reader."""

import json

from twisted.internet import defer, protocol, reactor
from http.cookiejar import CookieJar

from twisted.web.client import Agent, CookieAgent, readBody
from twisted.web.http_headers import Headers


def browser():
    """An agent that keeps cookies, as a browser does (the web monitor's session is a cookie)."""
    return CookieAgent(Agent(reactor), CookieJar())


@defer.inlineCallbacks
def get(url, headers=None, agent=None):
    """GET `url`; fires with (status code, twisted Headers, body bytes)."""
    agent = agent or Agent(reactor)
    response = yield agent.request(b"GET", url.encode(), Headers({k: [v] for k, v in (headers or {}).items()}))
    body = yield readBody(response)
    return response.code, response.headers, body


@defer.inlineCallbacks
def get_json(url, agent=None):
    code, _headers, body = yield get(url, agent=agent)
    return code, json.loads(body)


class EventStream(protocol.Protocol):
    """Collects the events of a text/event-stream response as dicts of their fields (`data` JSON-decoded)."""

    def __init__(self):
        self.events = []
        self._buffer = b""
        self.closed = defer.Deferred()

    def dataReceived(self, data):
        self._buffer += data
        while b"\n\n" in self._buffer:
            block, self._buffer = self._buffer.split(b"\n\n", 1)
            fields = {}
            for line in block.decode().splitlines():
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(":")
                fields[name] = fields.get(name, "") + value.removeprefix(" ")
            if "data" in fields:
                fields["data"] = json.loads(fields["data"])
                self.events.append(fields)

    def connectionLost(self, reason):
        self.closed.callback(None)


@defer.inlineCallbacks
def open_stream(url, headers=None):
    """Open an SSE stream; fires with (response, EventStream).  Stop it with response._transport.stopProducing()."""
    agent = Agent(reactor)
    response = yield agent.request(b"GET", url.encode(), Headers({k: [v] for k, v in (headers or {}).items()}))
    stream = EventStream()
    response.deliverBody(stream)
    return response, stream
