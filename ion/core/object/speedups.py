"""
The wire format's hot loops: compiled (_speedups.c, built by setup.py when it can be, as the top-level
module _ioncore_speedups) or in Python.

Every message received goes through a Structure's SHA-1 key checks and a header map's text
conversion, every event published through three content keys; in Python these took about a third
of the client's CPU per event (issue 11).  Both versions give the same answers, and
test_speedups checks that they do (the python_* functions are the Python versions, whichever is in use):

  type_key(value, type_bytes)   R1's content key, sha1(sha1(value) + type_bytes).
  canonical_elements(data, link_plans)
                                (rows, links_verified) of a Structure laid out as the codec writes it, or
                                None: the codec then reads it through upb.  A row per element: (key,
                                object_id, version, isleaf, value, key_ok, links).  key_ok: the key matches
                                the value and its type {object_id, version}.  links: ((key, object_id,
                                version, isleaf), ...) of the CASRefs in the value, for a version 1 type whose
                                link_plans entry (object id -> direct_link_fields) is a tuple and a value that
                                upb would read the same way; else None (the codec reads them from the parsed
                                object).  links_verified: every link was read and passes codec._check_links
                                without a graph walk (False: the codec checks them itself and names what is
                                wrong).  The Python version always answers None.
  text_headers(raw, names)      a msgpack header map (bytes names, `content` taken out) with each name
                                looked up in `names` and each value UTF-8 text made str (None, ints,
                                bools and floats as they are), or None if any name or value is other than
                                that: the caller's general path then looks at each.
  structure_from_parts(head, *items)
                                a Structure's bytes from its elements, each given as ((before, middle), key,
                                value) with (before, middle) from wire.element_parts: the event plan writes
                                a whole event's content with one call (bytes only).
"""

from hashlib import sha1

from ion.core.object.wire import varint


def python_type_key(value, type_bytes):
    return sha1(sha1(value).digest() + type_bytes).digest()


def python_canonical_elements(data, link_plans):
    return None


def python_text_headers(raw, names):
    try:
        return {names[key]: value.decode() if type(value) is bytes else _PLAIN[type(value)](value)
                for key, value in raw.items()}
    except (KeyError, TypeError, UnicodeDecodeError):
        return None


def python_structure_from_parts(head, *items):
    out = []
    field_tag = b"\x0a"  # the head; then every item is field 2
    for (before, middle), key, value in (head, *items):
        size = varint(len(value))
        out += (field_tag, varint(len(before) + len(key) + len(middle) + len(size) + len(value)),
                before, key, middle, size, value)
        field_tag = b"\x12"
    return b"".join(out)


def _same(value):
    return value


# The header values taken besides UTF-8 text, each given back as the very object.
_PLAIN = {int: _same, type(None): _same, bool: _same, float: _same}

try:
    from _ioncore_speedups import canonical_elements, structure_from_parts, text_headers, type_key

    COMPILED = True
except ImportError:  # not built (no compiler or no OpenSSL headers at install): the same in Python
    COMPILED = False
    type_key, canonical_elements, text_headers = python_type_key, python_canonical_elements, python_text_headers
    structure_from_parts = python_structure_from_parts
