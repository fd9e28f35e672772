"""Process and container identifiers: `<container id>.<local id>`."""


class Id:
    """An identifier scoped by a container (a value: not changed once made); compares equal to its string form."""

    default_container_id = "/"

    __slots__ = ("local", "container", "full")

    def __init__(self, local, container=None):
        self.local = str(local)
        self.container = container if container is not None else Id.default_container_id
        self.full = "%s.%s" % (self.container, self.local)  # made once: every message a process sends names it

    def __str__(self):
        return self.full

    def __repr__(self):
        return "Id(%r, %r)" % (self.local, self.container)

    def __eq__(self, other):
        return self.full == str(other)

    def __hash__(self):
        return hash(self.full)

    @classmethod
    def parse(cls, text):
        """Rebuild an Id from `<container>.<local>` (split at the last dot)."""
        container, dot, local = str(text).rpartition(".")
        if not dot:
            raise ValueError("not a scoped id: %r" % (text,))
        return cls(local, container)
