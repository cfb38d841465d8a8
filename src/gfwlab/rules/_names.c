/* gfwlab.rules._names: a set of names read from a list file's text, in C.
 *
 * A published blocklist is a hundred thousand to a million bare domains, one a line. As a
 * Python set each name is a str object of its own: reading one 100,000-name list took 37-42 ms
 * (a quarter of it the set's inserts, most of the rest the strings), a million-name list half a
 * second. Here the names stay where they are in the text, and an open-addressed table of their
 * positions is built in one pass: a few milliseconds a list, and a third of the memory. A
 * lookup hashes the asked name's bytes and compares them with the text; it costs what a Python
 * set's lookup of a new str costs (which hashes it too), whatever the list's size.
 *
 * NameSet(text, longest): text is ASCII bytes, names separated by b"\n"; empty lines are
 * skipped and a name's trailing dots are not part of it. ValueError for a line of dots only
 * or a name longer than `longest` (the caller then reads the list line by line, which says
 * which line). The set: `name in s` (a str; any other object or a non-ASCII str is not in it),
 * len(s) (distinct names), iter(s) (each distinct name once, as str, in the text's order),
 * s.lines (the names counted as lines, repeats included), pickling (by its text).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    PyObject_HEAD
    PyObject *text;   /* the bytes the names are in */
    Py_ssize_t longest;
    uint32_t *start;  /* per distinct name: where it starts in text */
    uint8_t *length;  /* and its length (at most 255) */
    Py_ssize_t count; /* distinct names */
    Py_ssize_t lines; /* names counted as lines */
    uint64_t *slots;  /* 0 empty; else the hash's top 32 bits << 32 | (1 + name index) */
    size_t mask;      /* slots - 1 */
} NameSet;

static inline uint64_t
hash_of(const uint8_t *p, Py_ssize_t n)
{
    uint64_t h = 0xCBF29CE484222325ULL ^ (uint64_t)n;
    for (Py_ssize_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001B3ULL;
    }
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ULL;
    return h ^ (h >> 32);
}

/* The slot holding the name p[:n] (or the empty slot where it would go). */
static inline size_t
find(const NameSet *s, const uint8_t *text, const uint8_t *p, Py_ssize_t n, uint64_t h)
{
    uint64_t tag = h >> 32;
    size_t at = (size_t)h & s->mask;
    while (s->slots[at]) {
        uint64_t slot = s->slots[at];
        if (slot >> 32 == tag) {
            uint32_t k = (uint32_t)slot - 1;
            if (s->length[k] == n && memcmp(text + s->start[k], p, (size_t)n) == 0)
                return at;
        }
        at = (at + 1) & s->mask;
    }
    return at;
}

static void
nameset_dealloc(NameSet *s)
{
    Py_XDECREF(s->text);
    PyMem_Free(s->start);
    PyMem_Free(s->length);
    PyMem_Free(s->slots);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyObject *
nameset_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *text;
    Py_ssize_t longest;
    static char *kwlist[] = {"text", "longest", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Sn:NameSet", kwlist, &text, &longest))
        return NULL;
    if (longest < 1 || longest > 255) {
        PyErr_SetString(PyExc_ValueError, "longest must be 1-255");
        return NULL;
    }
    const uint8_t *t = (const uint8_t *)PyBytes_AS_STRING(text);
    Py_ssize_t size = PyBytes_GET_SIZE(text);
    if (size >= (Py_ssize_t)UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "list text over 4 GiB");
        return NULL;
    }
    /* Names at most: the lines (a name and its newline take two bytes at least). */
    Py_ssize_t most = 1;
    for (const uint8_t *p = t, *end = t + size; (p = memchr(p, '\n', (size_t)(end - p))) != NULL;
         p++)
        most++;
    NameSet *s = (NameSet *)type->tp_alloc(type, 0);
    if (s == NULL)
        return NULL;
    s->text = Py_NewRef(text);
    s->longest = longest;
    size_t slots = 16;
    while (slots < 2 * (size_t)most)
        slots <<= 1;
    s->mask = slots - 1;
    s->start = PyMem_Malloc((size_t)most * sizeof(uint32_t));
    s->length = PyMem_Malloc((size_t)most);
    s->slots = PyMem_Calloc(slots, sizeof(uint64_t));
    if (s->start == NULL || s->length == NULL || s->slots == NULL) {
        Py_DECREF(s);
        return PyErr_NoMemory();
    }
    /* Names are placed a batch at a time: their hashes first, asking for each one's slot (the
     * table is read at random, a wait for memory each), then the places. */
    enum { BATCH = 16 };
    Py_ssize_t at = 0;
    while (at < size) {
        Py_ssize_t where[BATCH], len[BATCH];
        uint64_t hash[BATCH];
        int k = 0;
        while (k < BATCH && at < size) {
            const uint8_t *nl = memchr(t + at, '\n', (size_t)(size - at));
            Py_ssize_t end = nl ? nl - t : size, n = end - at;
            if (n > 0) {
                while (n > 0 && t[at + n - 1] == '.')
                    n--;
                if (n == 0 || n > longest) {
                    Py_DECREF(s);
                    PyErr_Format(PyExc_ValueError, "%s name at byte %zd",
                                 n ? "too long a" : "an empty", at);
                    return NULL;
                }
                where[k] = at;
                len[k] = n;
                hash[k] = hash_of(t + at, n);
                __builtin_prefetch(&s->slots[(size_t)hash[k] & s->mask]);
                k++;
            }
            at = end + 1;
        }
        for (int j = 0; j < k; j++) {
            size_t slot = find(s, t, t + where[j], len[j], hash[j]);
            if (!s->slots[slot]) {
                s->start[s->count] = (uint32_t)where[j];
                s->length[s->count] = (uint8_t)len[j];
                s->slots[slot] = (hash[j] >> 32 << 32) | (uint64_t)(s->count + 1);
                s->count++;
            }
            s->lines++;
        }
    }
    return (PyObject *)s;
}

static int
nameset_contains(NameSet *s, PyObject *name)
{
    if (!PyUnicode_Check(name) || !PyUnicode_IS_ASCII(name))
        return 0;
    Py_ssize_t n = PyUnicode_GET_LENGTH(name);
    if (n == 0 || n > s->longest)
        return 0;
    const uint8_t *p = PyUnicode_1BYTE_DATA(name);
    const uint8_t *t = (const uint8_t *)PyBytes_AS_STRING(s->text);
    return s->slots[find(s, t, p, n, hash_of(p, n))] != 0;
}

static Py_ssize_t
nameset_len(NameSet *s)
{
    return s->count;
}

static PyObject *
nameset_iter(NameSet *s)
{
    PyObject *names = PyList_New(s->count);
    if (names == NULL)
        return NULL;
    const char *t = PyBytes_AS_STRING(s->text);
    for (Py_ssize_t k = 0; k < s->count; k++) {
        PyObject *name = PyUnicode_FromStringAndSize(t + s->start[k], s->length[k]);
        if (name == NULL) {
            Py_DECREF(names);
            return NULL;
        }
        PyList_SET_ITEM(names, k, name);
    }
    PyObject *it = PyObject_GetIter(names);
    Py_DECREF(names);
    return it;
}

static PyObject *
nameset_reduce(NameSet *s, PyObject *Py_UNUSED(ignored))
{
    return Py_BuildValue("O(On)", (PyObject *)Py_TYPE(s), s->text, s->longest);
}

static PyObject *
nameset_lines(NameSet *s, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(s->lines);
}

static PySequenceMethods nameset_sequence = {
    .sq_length = (lenfunc)nameset_len,
    .sq_contains = (objobjproc)nameset_contains,
};

static PyMethodDef nameset_methods[] = {
    {"__reduce__", (PyCFunction)nameset_reduce, METH_NOARGS, "Pickled by its text."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef nameset_getset[] = {
    {"lines", (getter)nameset_lines, NULL, "The names counted as lines, repeats included.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject NameSetType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gfwlab.rules._names.NameSet",
    .tp_basicsize = sizeof(NameSet),
    .tp_dealloc = (destructor)nameset_dealloc,
    .tp_as_sequence = &nameset_sequence,
    .tp_iter = (getiterfunc)nameset_iter,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A set of names read from a list file's text (see the module comment).",
    .tp_methods = nameset_methods,
    .tp_getset = nameset_getset,
    .tp_new = nameset_new,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "gfwlab.rules._names", "A set of names read from a list's text.", -1,
    NULL,
};

PyMODINIT_FUNC
PyInit__names(void)
{
    if (PyType_Ready(&NameSetType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "NameSet", (PyObject *)&NameSetType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
