/*
 * Compiled versions of the loops every ION message goes through (issue 11); each has a
 * Python equivalent in ion/core/object/speedups.py, used when this module was not built.  It is
 * the top-level module _ioncore_speedups, not part of the ion package: run from a checkout, `ion`
 * is the checkout's own (no build in it) while this comes from where pip installed it.
 *
 *   type_key(value, type_bytes)      R1's content key: sha1(sha1(value) + type_bytes), 20 bytes.
 *   canonical_elements(data, link_plans)
 *                                    the elements of a Structure laid out as the codec writes it,
 *                                    their keys checked, their links read and checked; None for
 *                                    any other layout (the caller then reads it through upb, which
 *                                    gives the same values for this one).
 *   text_headers(raw, names)         a received msgpack header map with its names and UTF-8 texts
 *                                    as str; None for anything else (the caller's general path).
 *   structure_from_parts(head, *items)  a Structure's bytes, each element given as ((before, middle),
 *                                    key, value) (wire.element_parts): the event plan's one write.
 *
 * Nothing here raises for malformed input: it answers None and leaves the error to the general
 * path, which names it.
 */
#define PY_SSIZE_T_CLEAN
/* OpenSSL's SHA1_* functions: deprecated in 3.0 for EVP, whose provider dispatch per digest cost
 * 350 ns a content key here against their 210 (six digests per message sent and received). */
#define OPENSSL_API_COMPAT 0x10100000L
#include <Python.h>
#include <openssl/sha.h>

#define KEY_SIZE 20
#define WIRE_VARINT 0
#define WIRE_LENGTH 2

static int
digest(const void *a, size_t a_len, const void *b, size_t b_len, unsigned char *out)
{
    SHA_CTX context;
    return SHA1_Init(&context)
        && SHA1_Update(&context, a, a_len)
        && (b_len == 0 || SHA1_Update(&context, b, b_len))
        && SHA1_Final(out, &context);
}

/* sha1(sha1(value) + type_bytes) into out; 0 if OpenSSL failed. */
static int
content_key(const void *value, size_t value_len, const void *type_bytes, size_t type_len, unsigned char *out)
{
    unsigned char inner[KEY_SIZE];
    return digest(value, value_len, NULL, 0, inner) && digest(inner, KEY_SIZE, type_bytes, type_len, out);
}

static PyObject *
digest_failed(void)
{
    PyErr_SetString(PyExc_RuntimeError, "OpenSSL could not compute a SHA-1 digest");
    return NULL;
}

static PyObject *
wrong_arguments(const char *function)
{
    PyErr_Format(PyExc_TypeError, "%s takes exactly 2 arguments", function);
    return NULL;
}

static PyObject *
type_key(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer value, type_bytes;
    unsigned char key[KEY_SIZE];
    int ok;

    if (nargs != 2)
        return wrong_arguments("type_key");
    if (PyObject_GetBuffer(args[0], &value, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &type_bytes, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&value);
        return NULL;
    }
    ok = content_key(value.buf, value.len, type_bytes.buf, type_bytes.len, key);
    PyBuffer_Release(&value);
    PyBuffer_Release(&type_bytes);
    return ok ? PyBytes_FromStringAndSize((const char *)key, KEY_SIZE) : digest_failed();
}

/* --- canonical_elements ------------------------------------------------------------------ */

typedef struct {
    const unsigned char *at, *end;
} Reader;

/* A varint of at most 64 bits; 0 at the end of the input or for a longer one. */
static int
read_varint(Reader *r, unsigned long long *out)
{
    unsigned long long value = 0;
    for (int shift = 0; shift < 64 && r->at < r->end; shift += 7) {
        unsigned char byte = *r->at++;
        value |= (unsigned long long)(byte & 0x7F) << shift;
        if (!(byte & 0x80)) {
            *out = value;
            return 1;
        }
    }
    return 0;
}

/* The next field if it is field `number`: a varint into *value, or (length-delimited) its bytes. */
static int
read_field(Reader *r, unsigned field_number, int wire_type, unsigned long long *value, Reader *bytes)
{
    unsigned long long tag, size;
    if (!read_varint(r, &tag) || tag != ((unsigned long long)field_number << 3 | wire_type))
        return 0;
    if (wire_type == WIRE_VARINT)
        return read_varint(r, value);
    if (!read_varint(r, &size) || size > (unsigned long long)(r->end - r->at))
        return 0;
    bytes->at = r->at;
    bytes->end = r->at + size;
    r->at += size;
    return 1;
}

/* A varint as the one-to-five-byte encoding of a non-negative int32 (what GPBType serializes). */
static size_t
put_varint(unsigned long long n, unsigned char *out)
{
    size_t size = 0;
    while (n >= 0x80) {
        out[size++] = (unsigned char)(n & 0x7F) | 0x80;
        n >>= 7;
    }
    out[size++] = (unsigned char)n;
    return size;
}

/* What a StructureElement and a CASRef begin with: key (1), type (2: object_id 1, version 2), isleaf (3). */
typedef struct {
    Reader key;
    unsigned long long object_id, version, isleaf;
} Ref;

/* Those three fields, each once, in that order, canonical (isleaf 0 or 1, ids int32 >= 0); 0 otherwise. */
static int
read_ref(Reader *r, Ref *ref)
{
    Reader type;
    unsigned long long unused;
    return read_field(r, 1, WIRE_LENGTH, &unused, &ref->key)
        && read_field(r, 2, WIRE_LENGTH, &unused, &type)
        && read_field(r, 3, WIRE_VARINT, &ref->isleaf, NULL)
        && ref->isleaf <= 1
        && read_field(&type, 1, WIRE_VARINT, &ref->object_id, NULL)
        && read_field(&type, 2, WIRE_VARINT, &ref->version, NULL)
        && type.at == type.end && ref->object_id <= 0x7FFFFFFF && ref->version <= 0x7FFFFFFF;
}

/* Past one field of any wire type but groups; 0 for a group or a field cut short. */
static int
skip_field(Reader *r, unsigned long long tag)
{
    unsigned long long size;
    switch (tag & 7) {
    case 0:
        return read_varint(r, &size);
    case 1:
        size = 8;
        break;
    case 5:
        size = 4;
        break;
    case WIRE_LENGTH:
        if (!read_varint(r, &size))
            return 0;
        break;
    default:
        return 0;
    }
    if (size > (unsigned long long)(r->end - r->at))
        return 0;
    r->at += size;
    return 1;
}

/*
 * The links of an element's value whose type has links only in its own fields `plan`: a tuple of
 * (field number, repeated) in the order iter_links gives them.  A tuple of (key, object_id, version,
 * isleaf), field by field in plan order, each field's in wire order; Py_None (new references both)
 * when upb might read them otherwise: a link field twice that is not repeated, a field of the wrong
 * wire type, a CASRef not canonical, the value not well formed.  NULL with an exception set.
 */
static PyObject *
read_links(const Reader *value, PyObject *plan)
{
    PyObject *links = PyList_New(0), *result;
    for (Py_ssize_t i = 0; links != NULL && i < PyTuple_GET_SIZE(plan); i++) {
        PyObject *entry = PyTuple_GET_ITEM(plan, i);
        unsigned long field_number;
        int repeated, found = 0;
        Reader r = *value;
        if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 2) {
            PyErr_SetString(PyExc_TypeError, "a link plan is a tuple of (field number, repeated)");
            Py_CLEAR(links);
            break;
        }
        field_number = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(entry, 0));
        repeated = PyObject_IsTrue(PyTuple_GET_ITEM(entry, 1));
        if (PyErr_Occurred() || repeated < 0) {
            Py_CLEAR(links);
            break;
        }
        while (r.at < r.end) {
            unsigned long long tag, size;
            Reader casref;
            Ref ref;
            PyObject *link;
            if (!read_varint(&r, &tag))
                goto unreadable;
            if (tag >> 3 != field_number) {
                if (!skip_field(&r, tag))
                    goto unreadable;
                continue;
            }
            if ((tag & 7) != WIRE_LENGTH || (found++ && !repeated) || !read_varint(&r, &size)
                    || size > (unsigned long long)(r.end - r.at))
                goto unreadable;
            casref.at = r.at;
            casref.end = r.at + size;
            r.at += size;
            if (!read_ref(&casref, &ref) || casref.at != casref.end)
                goto unreadable;
            link = Py_BuildValue("(y#kkO)", (const char *)ref.key.at, (Py_ssize_t)(ref.key.end - ref.key.at),
                                 (unsigned long)ref.object_id, (unsigned long)ref.version, ref.isleaf ? Py_True : Py_False);
            if (link == NULL || PyList_Append(links, link) < 0) {
                Py_XDECREF(link);
                Py_CLEAR(links);
                break;
            }
            Py_DECREF(link);
        }
    }
    if (links == NULL)
        return NULL;
    result = PyList_AsTuple(links);
    Py_DECREF(links);
    return result;
unreadable:
    Py_DECREF(links);
    Py_RETURN_NONE;
}

/*
 * One StructureElement: key (1), type (2), isleaf (3), value (4), each once, in that order, nothing
 * else.  Appends (key, object_id, version, isleaf, value, key_ok, links) to `rows`, links as
 * read_links gives them for a version 1 type in `link_plans`, else None; 0 for any other layout,
 * -1 with an exception set.
 */
static int
read_element(Reader *element, PyObject *link_plans, PyObject *rows)
{
    Ref ref;
    Reader value;
    unsigned long long unused;
    unsigned char type_bytes[12], expected[KEY_SIZE];
    size_t type_len;
    int key_ok;
    PyObject *row, *plan = NULL, *links;

    if (!read_ref(element, &ref) || !read_field(element, 4, WIRE_LENGTH, &unused, &value) || element->at != element->end)
        return 0;
    /* The key covers the type as serialized (canonical varints), whatever the sender's varints were. */
    type_bytes[0] = 0x08;
    type_len = 1 + put_varint(ref.object_id, type_bytes + 1);
    type_bytes[type_len++] = 0x10;
    type_len += put_varint(ref.version, type_bytes + type_len);
    if (!content_key(value.at, value.end - value.at, type_bytes, type_len, expected)) {
        digest_failed();
        return -1;
    }
    key_ok = ref.key.end - ref.key.at == KEY_SIZE && memcmp(expected, ref.key.at, KEY_SIZE) == 0;
    if (ref.version == 1) {
        PyObject *id = PyLong_FromUnsignedLongLong(ref.object_id);
        if (id == NULL)
            return -1;
        plan = PyDict_GetItemWithError(link_plans, id);   /* borrowed */
        Py_DECREF(id);
        if (plan == NULL && PyErr_Occurred())
            return -1;
    }
    if (plan == NULL || !PyTuple_Check(plan)) {
        links = Py_NewRef(Py_None);
    } else if ((links = read_links(&value, plan)) == NULL) {
        return -1;
    }
    row = Py_BuildValue("(y#kkOy#ON)", (const char *)ref.key.at, (Py_ssize_t)(ref.key.end - ref.key.at),
                        (unsigned long)ref.object_id, (unsigned long)ref.version, ref.isleaf ? Py_True : Py_False,
                        (const char *)value.at, (Py_ssize_t)(value.end - value.at), key_ok ? Py_True : Py_False, links);
    if (row == NULL)
        return -1;
    key_ok = PyList_Append(rows, row);
    Py_DECREF(row);
    return key_ok < 0 ? -1 : 1;
}

/*
 * Whether the rows' links pass every check the codec makes of them (codec._check_links), in the
 * order pack() lays elements out: every link read, no key twice, each link's target present with
 * the link's type and isleaf and laid out before the element linking to it (the head after all),
 * an element a leaf exactly when it has no links, every element but the head linked to.  1 yes,
 * 0 no (the codec then checks in Python, and names what is wrong), -1 with an exception set.
 */
static int
links_verified(PyObject *rows)
{
    Py_ssize_t count = PyList_GET_SIZE(rows), linked = 0;
    PyObject *positions = PyDict_New();
    char *reached = PyMem_Calloc(count ? count : 1, 1);
    int verified = positions != NULL && reached != NULL;

    for (Py_ssize_t i = 0; verified == 1 && i < count; i++) {
        PyObject *position = PyLong_FromSsize_t(i), *key = PyTuple_GET_ITEM(PyList_GET_ITEM(rows, i), 0);
        int known = position == NULL ? -1 : PyDict_Contains(positions, key);
        if (known == 0 && PyDict_SetItem(positions, key, position) < 0)
            known = -1;
        Py_XDECREF(position);
        verified = known == 0 ? 1 : known == 1 ? 0 : -1;
    }
    for (Py_ssize_t i = 0; verified == 1 && i < count; i++) {
        PyObject *row = PyList_GET_ITEM(rows, i), *links = PyTuple_GET_ITEM(row, 6);
        Py_ssize_t rank = i ? i : count;
        if (links == Py_None || (PyTuple_GET_ITEM(row, 3) == Py_True) != (PyTuple_GET_SIZE(links) == 0)) {
            verified = 0;
            break;
        }
        for (Py_ssize_t l = 0; verified == 1 && l < PyTuple_GET_SIZE(links); l++) {
            PyObject *link = PyTuple_GET_ITEM(links, l), *position, *target;
            Py_ssize_t j;
            position = PyDict_GetItemWithError(positions, PyTuple_GET_ITEM(link, 0));
            if (position == NULL) {
                verified = PyErr_Occurred() ? -1 : 0;
                break;
            }
            j = PyLong_AsSsize_t(position);
            target = PyList_GET_ITEM(rows, j);
            for (int field = 1; verified == 1 && field <= 2; field++)   /* object_id, version */
                verified = PyObject_RichCompareBool(PyTuple_GET_ITEM(link, field), PyTuple_GET_ITEM(target, field), Py_EQ);
            if (verified == 1 && (PyTuple_GET_ITEM(link, 3) != PyTuple_GET_ITEM(target, 3) || (j ? j : count) >= rank))
                verified = 0;
            if (verified == 1 && !reached[j]) {
                reached[j] = 1;
                linked++;
            }
        }
    }
    if (verified == 1 && linked != count - 1)
        verified = 0;
    Py_XDECREF(positions);
    PyMem_Free(reached);
    if (verified == 1 && (positions == NULL || reached == NULL))
        verified = -1;
    return verified;
}

static PyObject *
canonical_elements(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *data, *link_plans;
    Py_buffer buffer;
    Reader structure, element;
    unsigned long long unused;
    unsigned field_number = 1;   /* the head, then items (2) */
    PyObject *rows;
    int read = 1;

    if (nargs != 2)
        return wrong_arguments("canonical_elements");
    data = args[0];
    link_plans = args[1];
    if (!PyDict_Check(link_plans)) {
        PyErr_SetString(PyExc_TypeError, "canonical_elements takes a dict of link plans");
        return NULL;
    }
    if (PyObject_GetBuffer(data, &buffer, PyBUF_SIMPLE) < 0) {   /* not contiguous bytes: left to upb */
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    rows = PyList_New(0);
    structure.at = buffer.buf;
    structure.end = structure.at + buffer.len;
    while (rows != NULL && read == 1 && (field_number == 1 || structure.at < structure.end)) {
        read = read_field(&structure, field_number, WIRE_LENGTH, &unused, &element);
        if (read)
            read = read_element(&element, link_plans, rows);
        field_number = 2;
    }
    PyBuffer_Release(&buffer);
    if (rows == NULL || read == -1) {
        Py_XDECREF(rows);
        return NULL;
    }
    if (read == 0) {
        Py_DECREF(rows);
        Py_RETURN_NONE;
    }
    read = links_verified(rows);
    if (read < 0) {
        Py_DECREF(rows);
        return NULL;
    }
    return Py_BuildValue("(NO)", rows, read ? Py_True : Py_False);
}

/* --- text_headers ------------------------------------------------------------------------ */

static PyObject *
text_headers(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *raw, *names, *headers, *key, *value, *name, *text;
    Py_ssize_t position = 0;

    if (nargs != 2)
        return wrong_arguments("text_headers");
    raw = args[0];
    names = args[1];
    if (!PyDict_CheckExact(raw) || !PyDict_CheckExact(names)) {
        PyErr_SetString(PyExc_TypeError, "text_headers takes two dicts");
        return NULL;
    }
    headers = PyDict_New();
    while (headers != NULL && PyDict_Next(raw, &position, &key, &value)) {
        name = PyDict_GetItemWithError(names, key);   /* borrowed */
        if (name == NULL) {
            if (PyErr_Occurred())
                PyErr_Clear();   /* an unhashable key: the general path says so */
            break;
        }
        if (PyBytes_CheckExact(value)) {
            text = PyUnicode_DecodeUTF8(PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value), NULL);
            if (text == NULL) {
                PyErr_Clear();
                break;
            }
        } else if (value == Py_None || PyLong_CheckExact(value) || PyBool_Check(value) || PyFloat_CheckExact(value)) {
            text = Py_NewRef(value);
        } else {
            break;
        }
        if (PyDict_SetItem(headers, name, text) < 0) {
            Py_DECREF(text);
            Py_CLEAR(headers);
            return NULL;
        }
        Py_DECREF(text);
    }
    if (headers != NULL && PyDict_GET_SIZE(headers) != PyDict_GET_SIZE(raw)) {
        Py_DECREF(headers);   /* stopped early: a name or a value the general path must look at */
        Py_RETURN_NONE;
    }
    return headers;
}

/* --- structure_from_parts ---------------------------------------------------------------- */

static size_t
varint_size(size_t n)
{
    size_t size = 1;
    while (n >= 0x80) {
        n >>= 7;
        size++;
    }
    return size;
}

/* One ((before, middle), key, value) argument as its four bytes objects (borrowed); 0 with TypeError. */
static int
element_pieces(PyObject *element, PyObject **pieces)
{
    PyObject *parts;
    if (!PyTuple_Check(element) || PyTuple_GET_SIZE(element) != 3
            || !PyTuple_Check(parts = PyTuple_GET_ITEM(element, 0)) || PyTuple_GET_SIZE(parts) != 2) {
        PyErr_SetString(PyExc_TypeError, "structure_from_parts takes ((before, middle), key, value) tuples");
        return 0;
    }
    pieces[0] = PyTuple_GET_ITEM(parts, 0);
    pieces[1] = PyTuple_GET_ITEM(element, 1);
    pieces[2] = PyTuple_GET_ITEM(parts, 1);
    pieces[3] = PyTuple_GET_ITEM(element, 2);
    for (int i = 0; i < 4; i++) {
        if (!PyBytes_Check(pieces[i])) {
            PyErr_Format(PyExc_TypeError, "structure_from_parts takes bytes, not %.100s", Py_TYPE(pieces[i])->tp_name);
            return 0;
        }
    }
    return 1;
}

static PyObject *
structure_from_parts(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *pieces[4], *out;
    size_t total = 0, inner, value_size;
    unsigned char *at;

    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "structure_from_parts takes the head's parts");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {   /* the size first: one bytes object, written in place */
        if (!element_pieces(args[i], pieces))
            return NULL;
        value_size = PyBytes_GET_SIZE(pieces[3]);
        inner = PyBytes_GET_SIZE(pieces[0]) + PyBytes_GET_SIZE(pieces[1]) + PyBytes_GET_SIZE(pieces[2])
            + varint_size(value_size) + value_size;
        total += 1 + varint_size(inner) + inner;
    }
    out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL)
        return NULL;
    at = (unsigned char *)PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < nargs; i++) {
        element_pieces(args[i], pieces);
        value_size = PyBytes_GET_SIZE(pieces[3]);
        inner = PyBytes_GET_SIZE(pieces[0]) + PyBytes_GET_SIZE(pieces[1]) + PyBytes_GET_SIZE(pieces[2])
            + varint_size(value_size) + value_size;
        *at++ = i == 0 ? 0x0A : 0x12;   /* the head (field 1), then items (field 2) */
        at += put_varint(inner, at);
        for (int piece = 0; piece < 4; piece++) {
            if (piece == 3)
                at += put_varint(value_size, at);
            memcpy(at, PyBytes_AS_STRING(pieces[piece]), PyBytes_GET_SIZE(pieces[piece]));
            at += PyBytes_GET_SIZE(pieces[piece]);
        }
    }
    return out;
}

/* --- the module ---------------------------------------------------------------------------- */

static PyMethodDef methods[] = {
    {"type_key", (PyCFunction)(void (*)(void))type_key, METH_FASTCALL,
     "type_key(value, type_bytes): R1's content key, sha1(sha1(value) + type_bytes)."},
    {"canonical_elements", (PyCFunction)(void (*)(void))canonical_elements, METH_FASTCALL,
     "canonical_elements(data, link_plans): ([(key, object_id, version, isleaf, value, key_ok, links)], "
     "links_verified) of a Structure in the codec's layout, or None."},
    {"text_headers", (PyCFunction)(void (*)(void))text_headers, METH_FASTCALL,
     "text_headers(raw, names): the header map with names and UTF-8 texts as str, or None."},
    {"structure_from_parts", (PyCFunction)(void (*)(void))structure_from_parts, METH_FASTCALL,
     "structure_from_parts(head, *items): a Structure's bytes from ((before, middle), key, value) elements."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_ioncore_speedups", "Compiled hot loops of the ION R1 wire format (see ion.core.object.speedups).", -1,
    methods,
};

PyMODINIT_FUNC
PyInit__ioncore_speedups(void)
{
    return PyModule_Create(&module_def);
}
