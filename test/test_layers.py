"""
The floors of ion/ and the rule between them: a module imports only from its
own floor or the floors below, and no import (at module level) goes round in
a circle.  The imports are read with `ast` from the source files; nothing is
imported to check them.

Floors, lowest first (the first matching prefix wins; a package's
`__init__` is on its package's floor):

 0 foundation     ion.util.ionlog, ion.core.ioninit, ion.core.exception,
                  ion.core.id, ion.core.resources, ion.core.metrics: logging,
                  configuration, errors, ids, resource paths and the metrics
                  registry, which every floor uses
 1 state machines ion.util.fsm, ion.util.state_object: the lifecycle every
                  receiver, process and pub/sub object follows
 2 wire format    ion.core.object (GPB objects, the Structure codec, message
                  instances) and ion.core.messaging.envelope (with its R1
                  names serialization and ionmessage): bytes in, objects out,
                  no broker
 3 broker         ion.core.messaging.broker: the connection (AMQP or embedded,
                  the embedded one with its queue types and streams)
 4 messaging      the rest of ion.core.messaging: messages, receivers,
                  ExchangeManager (the only door above to the connection)
 5 processes      ion.core.process, ion.util (procutils and the rest)
 6 pub/sub        ion.services.dm.distribution: publishers, subscribers,
                  events, dead letters, queue types (queue_types)
 7 services       the rest of ion.services, ion.interact, ion.tools (ion-events)
 8 container      ion.core.cc, ion.core.pack, ion.core.bootstrap, ion.test:
                  the capability container, its apps and the test harness
 9 package roots  ion, ion.core (empty __init__ files)

An import inside a function runs when the function is called; one is allowed
only if it is listed in LATE_IMPORTS with the reason it must be late.

Above the broker floor only ion.core.messaging.exchange (ExchangeManager)
touches the broker connection: nothing else says `exchange_manager.connection`.
"""

import ast
import functools
import os

from twisted.trial import unittest

ION_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ion")

FLOORS = [
    (0, "foundation", ("ion.util.ionlog", "ion.core.ioninit", "ion.core.exception", "ion.core.id", "ion.core.resources",
                       "ion.core.metrics")),
    (1, "state machines", ("ion.util.fsm", "ion.util.state_object")),
    (2, "wire format", ("ion.core.object", "ion.core.messaging.envelope", "ion.core.messaging.serialization",
                        "ion.core.messaging.ionmessage")),
    (3, "broker", ("ion.core.messaging.broker",)),
    (4, "messaging", ("ion.core.messaging",)),
    (5, "processes", ("ion.core.process", "ion.util")),
    (6, "pub/sub", ("ion.services.dm.distribution",)),
    (7, "services", ("ion.services", "ion.interact", "ion.tools")),
    (8, "container", ("ion.core.cc", "ion.core.pack", "ion.core.bootstrap", "ion.test")),
    (9, "package roots", ("ion.core", "ion")),
]

# (importing module, imported module) -> why the import sits inside a function.
LATE_IMPORTS = {
    ("ion.core.messaging.broker", "ion.core.messaging.broker.memory"):
        "connect() loads only the broker kind asked for: an embedded-broker run needs no txamqp",
    ("ion.core.messaging.broker", "ion.core.messaging.broker.amqp"):
        "connect() loads only the broker kind asked for: an AMQP run loads no embedded broker",
    ("ion.core.cc.service", "ion.core.cc.shell"):
        "Conch's manhole loads only when a shell starts (most containers run with no terminal)",
    ("ion.core.cc.service", "ion.core.cc.shell_api"): "loaded with the shell, as above",
    ("ion.core.cc.service", "ion.core.cc.debug_manhole"): "loaded only when ion.config turns the debug manhole on",
    ("ion.core.cc.shell_api", "ion.core.cc.service"):
        "info() reads the version from the twistd service, which is what loads this module",
}


def floor_of(module):
    """(number, name) of the floor `module` (a dotted ion name) is on."""
    for number, name, prefixes in FLOORS:
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                return number, name
    raise LookupError("%s is on no floor: add it to test_layers.FLOORS" % (module,))


def ion_modules():
    """{dotted name: path} of every module under ion/ (the generated GPB code left out: it imports only protobuf)."""
    modules = {}
    for directory, dirs, files in os.walk(ION_ROOT):
        dirs[:] = sorted(d for d in dirs if d not in ("gpb", "__pycache__"))
        for filename in files:
            if filename.endswith(".py"):
                path = os.path.join(directory, filename)
                parts = os.path.relpath(path, os.path.dirname(ION_ROOT))[: -len(".py")].split(os.sep)
                if parts[-1] == "__init__":
                    parts.pop()
                modules[".".join(parts)] = path
    return modules


def _resolve(name, known):
    """The ion module an imported name belongs to: itself, or the module it is an attribute of."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module, path, known):
    """[(imported ion module, line, at module level?)] of one source file."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found = []

    def visit(node, top_level):
        for child in ast.iter_child_nodes(node):
            inner = top_level and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            names = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                names = [base + "." + alias.name for alias in child.names] + [base]
            for name in names:
                if name == "ion" or name.startswith("ion."):
                    target = _resolve(name, known)
                    if target and target != module:
                        found.append((target, child.lineno, top_level))
            visit(child, inner)

    visit(tree, True)
    # "from a.b import c" names both a.b and (when c is a module) a.b.c: keep the deepest.
    unique = {}
    for target, line, top_level in found:
        key = (target, line)
        unique[key] = unique.get(key, False) or top_level
    deepest = {}
    for (target, line), top_level in unique.items():
        if not any(other.startswith(target + ".") and l == line for other, l in unique):
            deepest[(target, line)] = top_level
    return [(target, line, top_level) for (target, line), top_level in sorted(deepest.items())]


@functools.cache
def import_graph():
    """(modules, {module: [(imported, line, at module level?)]}) over ion/, read once per run."""
    modules = ion_modules()
    return modules, {module: imports_of(module, path, modules) for module, path in modules.items()}


def find_cycle(edges):
    """One import circle (a list of modules, first == last) among `edges` {module: set(modules)}, or None."""
    state = {}
    for start in sorted(edges):
        if start in state:
            continue
        state[start] = "open"
        stack = [(start, iter(sorted(edges[start])))]
        path = [start]
        while stack:
            node, pending = stack[-1]
            child = next(pending, None)
            if child is None:
                state[node] = "done"
                stack.pop()
                path.pop()
            elif state.get(child) == "open":
                return path[path.index(child):] + [child]
            elif child not in state:
                state[child] = "open"
                stack.append((child, iter(sorted(edges.get(child, ())))))
                path.append(child)
    return None


class LayerTests(unittest.TestCase):
    def setUp(self):
        self.modules, self.graph = import_graph()

    def test_every_module_has_a_floor(self):
        for module in self.modules:
            floor_of(module)

    def test_no_upward_import(self):
        upward = []
        for module, imports in sorted(self.graph.items()):
            number, name = floor_of(module)
            for target, line, _top_level in imports:
                target_number, target_name = floor_of(target)
                if target_number > number:  # late imports too: a listed one may be late, not upward
                    upward.append("%s:%d (%s) imports %s (%s)" % (module, line, name, target, target_name))
        self.assertEqual(upward, [], "upward imports:\n  " + "\n  ".join(upward))

    def test_no_unlisted_late_import(self):
        late = sorted(
            "%s:%d imports %s inside a function" % (module, line, target)
            for module, imports in self.graph.items()
            for target, line, top_level in imports
            if not top_level and (module, target) not in LATE_IMPORTS
        )
        self.assertEqual(late, [], "imports inside functions not in LATE_IMPORTS:\n  " + "\n  ".join(late))

    def test_listed_late_imports_exist(self):
        present = {(module, target) for module, imports in self.graph.items() for target, _line, top in imports if not top}
        self.assertEqual(sorted(set(LATE_IMPORTS) - present), [], "LATE_IMPORTS lists imports that are gone")

    def test_no_import_cycle(self):
        edges = {module: {t for t, _line, top_level in imports if top_level} for module, imports in self.graph.items()}
        cycle = find_cycle(edges)
        self.assertIsNone(cycle, "import circle: %s" % (" -> ".join(cycle or ()),))

    def test_only_the_exchange_manager_holds_the_connection(self):
        """Above the broker, nobody reaches through `exchange_manager.connection`: ExchangeManager has a method for it."""
        reaching = []
        for module, path in sorted(self.modules.items()):
            if floor_of(module)[0] == 3 or module == "ion.core.messaging.exchange":
                continue
            for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
                if isinstance(node, ast.Attribute) and node.attr == "connection":
                    owner = node.value
                    owner_name = getattr(owner, "attr", None) or getattr(owner, "id", None)
                    if owner_name == "exchange_manager":
                        reaching.append("%s:%d" % (module, node.lineno))
        self.assertEqual(reaching, [], "exchange_manager.connection used in:\n  " + "\n  ".join(reaching))

    # --- the checker itself ---------------------------------------------------
    def test_floor_table_is_ordered_by_prefix(self):
        self.assertEqual(floor_of("ion.core.messaging.envelope"), (2, "wire format"))
        self.assertEqual(floor_of("ion.core.messaging.broker.amqp"), (3, "broker"))
        self.assertEqual(floor_of("ion.core.messaging.receiver"), (4, "messaging"))
        self.assertEqual(floor_of("ion.util.procutils"), (5, "processes"))
        self.assertEqual(floor_of("ion.util.ionlog"), (0, "foundation"))
        self.assertRaises(LookupError, floor_of, "elsewhere.module")

    def test_find_cycle(self):
        self.assertEqual(find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}), ["a", "b", "c", "a"])
        self.assertIsNone(find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}))
