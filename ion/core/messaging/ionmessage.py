"""Assembling the ION common message (the header map of R1 §4.6)."""

import time


def build_message(sender, recipient, operation, content, headers=None):
    """
    The dict that goes on the wire, before content encoding.

    Defaults first, then the caller's headers (which may override any of
    them), then `performative`, `op` and `content`, which headers cannot
    override.
    """
    headers = headers or {}
    message = {
        "sender": str(sender),
        "receiver": str(recipient),
        "reply-to": str(sender),
        "encoding": "json",
        "language": "ion1",
        "format": "raw",
        "ontology": "",
        "user-id": "ANONYMOUS",
        "expiry": "0",
        "conv-id": "",
        "conv-seq": 1,
        "protocol": "",
        "status": "OK",
        "ts": str(int(time.time() * 1000)),
    }
    message.update(headers)
    message["user-id"] = str(message["user-id"])
    message["expiry"] = str(message["expiry"])
    message["performative"] = headers.get("performative", "")
    message["op"] = operation
    message["content"] = content
    return message
