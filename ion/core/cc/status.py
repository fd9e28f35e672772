"""
A container's status port (`twistd cc --status_port N`): `/metrics` in
Prometheus text format, `/live` (200 while the reactor runs) and `/ready`
(503 with a JSON reason while the broker connection is down or a
subscriber's consumer is gone, 200 otherwise).  Off by default; it binds
127.0.0.1 unless told otherwise.
"""

import json

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet import reactor
from twisted.web import resource, server

from ion.core import metrics
from ion.util.state_object import BasicStates


def readiness_problems(container):
    """Why the container is not ready to do its work (an empty list: it is)."""
    if not container.exchange_manager.connected:
        return ["broker connection is down (%s)" % (container.exchange_manager.description,)]
    problems = []
    for subscriber in list(metrics.subscribers):
        if subscriber.state != BasicStates.ACTIVE or _container_of(subscriber) is not container.exchange_manager:
            continue
        if not subscriber.consuming:
            problems.append("subscriber %s has no consumer" % (subscriber.consumer_config["routing_key"],))
    return problems


def _container_of(subscriber):
    try:
        return subscriber.exchange_manager
    except Exception:  # its process left the container
        return None


class _Json(resource.Resource):
    isLeaf = True

    def answer(self, request, code, body):
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(body).encode()


class Live(_Json):
    def render_GET(self, request):
        return self.answer(request, 200, {"live": True})


class Ready(_Json):
    def __init__(self, container):
        super().__init__()
        self.container = container

    def render_GET(self, request):
        problems = readiness_problems(self.container)
        if problems:
            return self.answer(request, 503, {"ready": False, "reason": "; ".join(problems), "problems": problems})
        return self.answer(request, 200, {"ready": True})


class Metrics(resource.Resource):
    isLeaf = True

    def __init__(self, container):
        super().__init__()
        self.container = container

    def render_GET(self, request):
        metrics.broker_connected.set(1 if self.container.exchange_manager.connected else 0)
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(metrics.REGISTRY)


def status_site(container):
    root = resource.Resource()
    root.putChild(b"metrics", Metrics(container))
    root.putChild(b"live", Live())
    root.putChild(b"ready", Ready(container))
    site = server.Site(root)
    site.noisy = False
    site.displayTracebacks = False
    return site


def parse_port(value):
    """The --status_port value as a port number; a ValueError says what is wrong."""
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ValueError("--status_port must be a number, not %r" % (value,)) from None
    if not 0 < port < 65536:
        raise ValueError("--status_port must be 1..65535, not %d" % (port,))
    return port


def listen(container, port, interface="127.0.0.1"):
    """Start serving the container's status on interface:port; returns the listening port (stopListening())."""
    return reactor.listenTCP(port, status_site(container), interface=interface)
