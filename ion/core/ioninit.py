"""
Process-wide ION state: the system name, the running container, the container
arguments, and the merged configuration (reference §4.1, §7.1, §7.3).

Configuration is a dict keyed by module name, each value a dict of settings.
It is loaded at import from ``res/config/ion.config``, merged recursively with
``res/config/ionlocal.config`` if present, then with the file named by the
``ION_LOCAL_CONFIG`` environment variable if set.  Files are Python dict
literals read with ``ast.literal_eval`` -- never ``eval`` as R1 did -- so a
config file cannot run code.  Apps merge their ``config`` entries with
`merge_config`; modules read settings through the live views `config` returns.

Importing this module only loads configuration: no logging setup and no signal
handlers, unlike R1.
"""

import ast
import copy
import difflib
import os
import re
import socket

from ion.core.exception import ConfigurationError
from ion.core.resources import resource_path

ION_CONFIG = "res/config/ion.config"
ION_LOCAL_CONFIG = "res/config/ionlocal.config"
LOCAL_CONFIG_ENV = "ION_LOCAL_CONFIG"

# The system (cluster) name; scopes exchanges and queues.  Set by apply_container_args.
sys_name = None
# The running Container, once one has been created.
container_instance = None
# Parsed container args (see parse_container_args); updated in place.
cont_args = {}
# True unless a real container runs; a plain attribute others may set.
testing = True

_config = {}




class ConfigView:
    """
    One module's section of the merged configuration.

    Reads go to the current merged config each time, so settings merged later
    (e.g. by an app starting) show through views created earlier.
    """

    def __init__(self, name):
        self.name = name

    def _section(self):
        return _config.get(self.name, {})

    def __getitem__(self, key):
        """The setting, or None when it is missing (R1 semantics)."""
        return self._section().get(key)

    def get(self, key, default=None):
        return self._section().get(key, default)

    def getValue(self, key, default=None):
        """R1 spelling of `get`."""
        return self.get(key, default)

    def __contains__(self, key):
        return key in self._section()

    def as_dict(self):
        """A deep copy of the section as it is now."""
        return copy.deepcopy(self._section())

    def __repr__(self):
        return f"ConfigView({self.name!r})"


def config(name):
    """The live configuration view for module `name` (usually ``__name__``)."""
    return ConfigView(name)


def read_config_file(path):
    """Parse one config file into a dict of sections, or raise ConfigurationError."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigurationError(f"{path}: cannot read config file: {e.strerror}") from e
    try:
        value = ast.literal_eval(ast.parse(text, filename=path, mode="eval"))
    except SyntaxError as e:
        raise ConfigurationError(f"{path}, line {e.lineno}: syntax error: {e.msg}") from e
    except ValueError as e:
        raise ConfigurationError(f"{path}: not a plain literal: {e}") from e
    _check_sections(value, path)
    return value


def _check_sections(value, origin):
    if not isinstance(value, dict):
        raise ConfigurationError(f"{origin}: config must be a dict, not {type(value).__name__}")
    for name, section in value.items():
        if not isinstance(section, dict):
            raise ConfigurationError(
                f"{origin}: section {name!r} must be a dict, not {type(section).__name__}"
            )


def _merge(target, overlay):
    """Merge `overlay` into `target`: dicts recursively, anything else replaces."""
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def merge_config(overlay, origin="merged config"):
    """Merge a ``{module: {key: value}}`` dict into the live configuration."""
    _check_sections(overlay, origin)
    _merge(_config, overlay)


def default_config_paths():
    """ion.config, then ionlocal.config if it exists, then $ION_LOCAL_CONFIG if set."""
    paths = [resource_path(ION_CONFIG)]
    local = resource_path(ION_LOCAL_CONFIG)
    if os.path.exists(local):
        paths.append(local)
    if os.environ.get(LOCAL_CONFIG_ENV):
        paths.append(os.environ[LOCAL_CONFIG_ENV])
    return paths


def load_config(paths=None):
    """
    Replace the configuration with the files in `paths`, merged in order.

    Defaults to `default_config_paths`.  Every listed file must exist.  Nothing
    changes if any file is bad.
    """
    sections = [read_config_file(p) for p in (default_config_paths() if paths is None else paths)]
    _config.clear()
    for section in sections:
        _merge(_config, section)


def parse_container_args(text):
    """
    Container args (``twistd cc -a``) as a dict, the raw text under ``'_args'``.

    Three forms: a dict literal ``"{'sysname': 'x'}"``; comma-separated
    ``k=v`` pairs (whitespace stripped, values stay strings, empty segments
    ignored); or any other text, stored under ``'args'``.
    """
    raw = text or ""
    stripped = raw.strip()
    if stripped.startswith("{"):
        args = _parse_dict_literal(raw)
    elif "=" in stripped:
        args = {}
        for part in stripped.split(","):
            if not part.strip():
                continue
            key, sep, value = part.partition("=")
            if not sep or not key.strip():
                raise ConfigurationError(f"container args {raw!r}: {part.strip()!r} is not key=value")
            args[key.strip()] = value.strip()
    elif stripped:
        args = {"args": stripped}
    else:
        args = {}
    args["_args"] = raw
    return args


def _parse_dict_literal(text):
    try:
        value = ast.literal_eval(text.strip())
    except (SyntaxError, ValueError) as e:
        raise ConfigurationError(f"container args {text!r}: not a valid dict literal: {e}") from e
    if not isinstance(value, dict):
        raise ConfigurationError(f"container args {text!r}: not a dict")
    return value


_SYSNAME = re.compile(r"[\w.:-]+")
_SYSNAME_PAIR = re.compile(r"(^|,)(\s*)sysname\s*=[^,]*")


def merge_sysname(args_text, sysname):
    """
    Fold ``--sysname`` into the container-args text (R1's rule, made robust).

    In ``k=v`` text an existing ``sysname=...`` pair is replaced (its whole
    value, where R1 matched only ``\\w+``), else ``sysname=<x>, `` is
    prepended.  Dict-literal and free text, which R1 corrupted by prepending,
    become a dict literal with the sysname added.  No sysname: text unchanged.
    """
    if not sysname:
        return args_text
    if not _SYSNAME.fullmatch(sysname):
        raise ConfigurationError(f"sysname {sysname!r}: use letters, digits, '_', '.', ':' or '-'")
    text = (args_text or "").strip()
    if text.startswith("{"):
        return repr({**_parse_dict_literal(text), "sysname": sysname})
    if not text:
        return f"sysname={sysname}"
    if "=" not in text:
        return repr({"sysname": sysname, "args": text})
    merged, found = _SYSNAME_PAIR.subn(lambda m: f"{m[1]}{m[2]}sysname={sysname}", text, count=1)
    return merged if found else f"sysname={sysname}, {text}"


# Container args the container reads; `apparg_<app>` keys go to that app's start.
KNOWN_CONTAINER_ARGS = ("sysname", "contid", "args", "_args", "event_store")
APP_ARG_PREFIX = "apparg_"


def unknown_container_args(args):
    """
    [(key, suggestion or None)] for each container arg nothing reads, so a
    misspelt key (``syssname``) can be pointed out instead of ignored.
    """
    spellings = {"sysname": "sysname", "contid": "contid", APP_ARG_PREFIX: APP_ARG_PREFIX + "<app>"}
    unknown = []
    for key in args:
        if key in KNOWN_CONTAINER_ARGS or (isinstance(key, str) and key.startswith(APP_ARG_PREFIX)):
            continue
        close = difflib.get_close_matches(str(key), spellings, n=1)
        unknown.append((key, spellings[close[0]] if close else None))
    return unknown


def default_container_id():
    """``<hostname>.<pid>`` with every '.' made '_', e.g. ``myhost_example_org_12345``."""
    return f"{socket.gethostname()}.{os.getpid()}".replace(".", "_")


def container_id():
    """The ``contid`` container arg if given, else `default_container_id`."""
    return cont_args.get("contid") or default_container_id()


def apply_container_args(args):
    """
    Install container args (a dict, or text for `parse_container_args`).

    Sets `cont_args` and `sys_name`: the ``sysname`` arg when non-empty, else
    the container id (which honours ``contid``).
    """
    global sys_name
    if isinstance(args, str):
        args = parse_container_args(args)
    cont_args.clear()
    cont_args.update(args)
    sys_name = cont_args.get("sysname") or container_id()


def reset():
    """Back to import-time state for tests: no container, no args, fresh config."""
    global sys_name, container_instance, testing
    sys_name = None
    container_instance = None
    testing = True
    cont_args.clear()
    load_config()


load_config()
