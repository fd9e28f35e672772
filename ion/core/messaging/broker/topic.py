"""
AMQP topic matching, word for word as RabbitMQ does it.

Routing keys and binding patterns are split on '.'; words may be empty
('a..b' is three words, '.' is two empty ones), except that the empty string
is *no* words at all.  So '#' matches '' but '*' does not, and the pattern ''
matches only the key ''.  '*' is exactly one word, '#' zero or more, and both
are special only as a whole word ('a#' is literal).

`matches` answers for one pattern; `TopicTrie` holds many bindings and finds
every value whose pattern matches a key in one walk, the way RabbitMQ's topic
exchange does, so routing cost does not grow with the number of bindings.
"""

from functools import lru_cache

__all__ = ["split_words", "matches", "TopicTrie"]


@lru_cache(maxsize=4096)
def split_words(text):
    """The words of a routing key or pattern; '' has none (RabbitMQ's rule)."""
    return tuple(text.split(".")) if text else ()


def matches(pattern, routing_key):
    """True when `routing_key` matches the binding `pattern`."""
    key = split_words(routing_key)
    # Set of positions in `key` that the pattern words seen so far can reach.
    reach = {0}
    for word in split_words(pattern):
        if word == "#":
            reach = set(range(min(reach), len(key) + 1))
        elif word == "*":
            reach = {i + 1 for i in reach if i < len(key)}
        else:
            reach = {i + 1 for i in reach if i < len(key) and key[i] == word}
        if not reach:
            return False
    return len(key) in reach


class _Node:
    __slots__ = ("children", "values")

    def __init__(self):
        self.children = {}
        self.values = set()


class TopicTrie:
    """Bindings (pattern -> set of values) indexed for fast matching."""

    def __init__(self):
        self._root = _Node()

    def add(self, pattern, value):
        node = self._root
        for word in split_words(pattern):
            node = node.children.setdefault(word, _Node())
        node.values.add(value)

    def remove(self, pattern, value):
        """Forget `value` under `pattern`, pruning branches left empty."""
        path = [self._root]
        for word in split_words(pattern):
            node = path[-1].children.get(word)
            if node is None:
                return
            path.append(node)
        path[-1].values.discard(value)
        for parent, word, node in zip(reversed(path[:-1]), reversed(split_words(pattern)), reversed(path[1:])):
            if node.values or node.children:
                break
            del parent.children[word]

    def match(self, routing_key):
        """The set of values bound with a pattern that matches `routing_key`."""
        key = split_words(routing_key)
        end = len(key)
        found = set()
        seen = set()
        # Each state is a trie node and how many key words are consumed; a
        # node reached through '#' may also swallow further words itself.
        stack = [(self._root, 0, False)]
        while stack:
            node, i, is_hash = stack.pop()
            state = (id(node), i)
            if state in seen:
                continue
            seen.add(state)
            children = node.children
            if is_hash and i < end:
                stack.append((node, i + 1, True))
            if i == end:
                found |= node.values
            hash_node = children.get("#")
            if hash_node is not None:
                stack.append((hash_node, i, True))
            if i < end:
                for word in (key[i], "*"):
                    child = children.get(word)
                    if child is not None and word != "#":
                        stack.append((child, i + 1, False))
        return found
