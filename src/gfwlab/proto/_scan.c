/* gfwlab.proto._scan: byte loops the censor runs on nearly every flow, in C.
 *
 * The engine reads a few bytes of each flow, and a few of those reads are loops over every byte
 * or every field of a message, which compiled Python runs one boxed object at a time:
 *
 * - client_hello(data, start, end): a ClientHello body's fields (gfwlab.proto.tls). About 17
 *   extensions and 16 cipher suites in a browser's hello, 4 us of struct calls and set lookups
 *   a hello; here 0.3 us.
 * - dns_query(data, name_limit): a DNS query's question (gfwlab.proto.dns), 1.6 us a query
 *   in compiled Python, a label at a time.
 * - zero_run(data, pos, end): where a run of zero bytes ends (a QUIC Initial's PADDING, a
 *   thousand bytes: a copy and a strip each time before).
 * - entropy(data): a payload's byte entropy (gfwlab.mechanisms.ss_probing), 13 us a call with
 *   a call to math.log2 per byte value present.
 *
 * client_hello and dns_query are fast paths only: they read a message that is well formed and
 * plain (for a hello: no field that overruns, no duplicate extension, no trailing byte, one
 * host_name, no empty ALPN name) and return None for anything else, which the Python parser
 * then reads with its errors and anomalies (tests/test_byte_loops.py holds the two to the same
 * result). entropy computes the float
 * the Python definition computes: each share c / n as one double division, log2 from the C
 * library (math.log2 calls it), the terms added in byte-value order.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define EXT_SERVER_NAME 0x0000
#define EXT_ALPN 0x0010
#define EXT_ESNI 0xFFCE
#define EXT_ECH 0xFE0D

static inline unsigned
u16(const uint8_t *p)
{
    return ((unsigned)p[0] << 8) | p[1];
}

/* The extension types seen in the hello being read: one bit each. Only the bits set are
 * cleared afterwards (the types are in the result's list), so a call costs what it reads. */
static uint64_t seen_bits[65536 / 64];

static inline int
seen_add(unsigned type)
{
    uint64_t bit = (uint64_t)1 << (type & 63);
    if (seen_bits[type >> 6] & bit)
        return 1;
    seen_bits[type >> 6] |= bit;
    return 0;
}

/* A byte as bytes.lower() leaves it: ASCII letters lowered, every other byte as it is. */
static inline char
lower(uint8_t c)
{
    return (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
}

/* A str from latin-1 bytes, ASCII letters lowered (bytes.lower() then .decode("latin-1")). */
static PyObject *
lowered(const uint8_t *p, Py_ssize_t n)
{
    char small[256];
    char *buf = n <= (Py_ssize_t)sizeof(small) ? small : PyMem_Malloc((size_t)n);
    if (buf == NULL)
        return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < n; i++)
        buf[i] = lower(p[i]);
    PyObject *s = PyUnicode_DecodeLatin1(buf, n, NULL);
    if (buf != small)
        PyMem_Free(buf);
    return s;
}

/* The plain hello in d[start:end] (see the module comment), or 0 with *out unset (not plain)
 * or -1 (an error raised). */
static int
read_hello(const uint8_t *d, Py_ssize_t start, Py_ssize_t end, PyObject **out)
{
    PyObject *suites = NULL, *types = NULL, *names = NULL, *alpn = NULL;
    unsigned listed[16384 / 4 + 1];
    Py_ssize_t n_types = 0;
    int result = 0;
    Py_ssize_t pos = start;
    if (pos + 34 > end)
        return 0;
    unsigned version = u16(d + pos);
    pos += 34;
    /* legacy_session_id<0..32> */
    if (pos + 1 > end || pos + 1 + d[pos] > end)
        return 0;
    pos += 1 + d[pos];
    /* cipher_suites<2..2^16-2>: an even length */
    if (pos + 2 > end)
        return 0;
    Py_ssize_t suites_at = pos + 2, suites_len = u16(d + pos);
    if (suites_at + suites_len > end || suites_len % 2)
        return 0;
    pos = suites_at + suites_len;
    /* legacy_compression_methods<1..2^8-1> */
    if (pos + 1 > end || pos + 1 + d[pos] > end)
        return 0;
    pos += 1 + d[pos];
    Py_ssize_t block = pos, block_end = pos;
    if (pos < end) {
        if (pos + 2 > end)
            return 0;
        block = pos + 2;
        block_end = block + u16(d + pos);
        if (block_end != end) /* overrun, or bytes after the extensions */
            return 0;
    }
    if (block_end - block > 4 * (Py_ssize_t)(sizeof(listed) / sizeof(listed[0])))
        return 0;
    int esni = 0, ech = 0;
    names = PyList_New(0);
    alpn = PyList_New(0);
    if (names == NULL || alpn == NULL)
        goto fail;
    while (block < block_end) {
        if (block + 4 > block_end)
            goto plain_not;
        unsigned type = u16(d + block);
        Py_ssize_t ext = block + 4;
        block = ext + u16(d + block + 2);
        if (block > block_end || seen_add(type))
            goto plain_not;
        listed[n_types++] = type;
        if (type == EXT_ESNI)
            esni = 1;
        else if (type == EXT_ECH)
            ech = 1;
        else if (type == EXT_SERVER_NAME) {
            /* server_name_list<1..2^16-1>, filling the extension, of exactly one host_name */
            if (ext + 2 > block || ext + 2 + u16(d + ext) != block)
                goto plain_not;
            Py_ssize_t at = ext + 2;
            if (at + 3 > block || d[at] != 0)
                goto plain_not;
            Py_ssize_t name = at + 3, name_end = name + u16(d + at + 1);
            if (name_end != block)
                goto plain_not;
            PyObject *s = lowered(d + name, name_end - name);
            if (s == NULL || PyList_Append(names, s) < 0) {
                Py_XDECREF(s);
                goto fail;
            }
            Py_DECREF(s);
        } else if (type == EXT_ALPN) {
            /* protocol_name_list<2..2^16-1>, filling the extension, of non-empty names */
            if (ext + 2 > block || ext + 2 + u16(d + ext) != block)
                goto plain_not;
            Py_ssize_t at = ext + 2;
            while (at < block) {
                Py_ssize_t name = at + 1;
                at = name + d[at];
                if (at > block || at == name)
                    goto plain_not;
                PyObject *s = PyUnicode_DecodeLatin1((const char *)d + name, at - name, NULL);
                if (s == NULL || PyList_Append(alpn, s) < 0) {
                    Py_XDECREF(s);
                    goto fail;
                }
                Py_DECREF(s);
            }
        }
    }
    suites = PyTuple_New(suites_len / 2);
    types = PyTuple_New(n_types);
    if (suites == NULL || types == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < suites_len / 2; i++) {
        PyObject *v = PyLong_FromLong((long)u16(d + suites_at + 2 * i));
        if (v == NULL)
            goto fail;
        PyTuple_SET_ITEM(suites, i, v);
    }
    for (Py_ssize_t i = 0; i < n_types; i++) {
        PyObject *v = PyLong_FromLong((long)listed[i]);
        if (v == NULL)
            goto fail;
        PyTuple_SET_ITEM(types, i, v);
    }
    PyObject *name_tuple = PyList_AsTuple(names), *alpn_tuple = PyList_AsTuple(alpn);
    if (name_tuple == NULL || alpn_tuple == NULL) {
        Py_XDECREF(name_tuple);
        Py_XDECREF(alpn_tuple);
        goto fail;
    }
    *out = Py_BuildValue("(INNNNOO)", version, suites, types, name_tuple, alpn_tuple,
                         esni ? Py_True : Py_False, ech ? Py_True : Py_False);
    suites = types = NULL; /* stolen by "N", also when the build fails */
    result = *out == NULL ? -1 : 1;
    goto done;
fail:
    result = -1;
    goto done;
plain_not:
    result = 0;
done:
    for (Py_ssize_t i = 0; i < n_types; i++)
        seen_bits[listed[i] >> 6] &= ~((uint64_t)1 << (listed[i] & 63));
    Py_XDECREF(suites);
    Py_XDECREF(types);
    Py_XDECREF(names);
    Py_XDECREF(alpn);
    return result;
}

/* client_hello(data, start, end) -> (legacy_version, cipher_suites, extensions, sni_names,
 * alpn, has_esni, has_ech) | None */
static PyObject *
client_hello(PyObject *self, PyObject *args)
{
    Py_buffer buf;
    Py_ssize_t start, end;
    if (!PyArg_ParseTuple(args, "y*nn", &buf, &start, &end))
        return NULL;
    PyObject *out = NULL;
    int got = 0;
    if (start >= 0 && start <= end && end <= buf.len)
        got = read_hello(buf.buf, start, end, &out);
    PyBuffer_Release(&buf);
    if (got < 0)
        return NULL;
    return got ? out : Py_NewRef(Py_None);
}

/* dns_query(data, name_limit) -> (id, flags, qname, name_end, qtype, qclass) | None
 *
 * A plain DNS query (gfwlab.proto.dns.parse_strict): a header with QR clear and QDCOUNT 1, a
 * name of labels of 1 to 63 bytes with no dot or NUL in any, whole within name_limit (dots
 * counted) and the datagram, then QTYPE and QCLASS. qname is the labels joined with dots, ASCII
 * letters lowered, latin-1 decoded; name_end is where the name's last length byte (the zero)
 * ends. Anything else is None: the Python parser reads it, with its errors and anomalies. */
static PyObject *
dns_query(PyObject *self, PyObject *args)
{
    Py_buffer buf;
    Py_ssize_t limit;
    if (!PyArg_ParseTuple(args, "y*n", &buf, &limit))
        return NULL;
    const uint8_t *d = buf.buf;
    Py_ssize_t n = buf.len, pos = 12, name_len = 0;
    char name[256];
    PyObject *result = NULL;
    if (n < 12 || (d[2] & 0x80) || u16(d + 4) != 1 || limit < 1 || limit > 255)
        goto plain_not;
    for (;;) {
        if (pos >= n)
            goto plain_not;
        unsigned length = d[pos++];
        if (length == 0)
            break;
        if (length & 0xC0)
            goto plain_not;
        Py_ssize_t dot = name_len ? 1 : 0;
        if (name_len + 2 > limit || name_len + dot + (Py_ssize_t)length > limit ||
            pos + (Py_ssize_t)length > n)
            goto plain_not; /* cut short by the limit, or past the datagram */
        if (dot)
            name[name_len++] = '.';
        for (unsigned i = 0; i < length; i++) {
            uint8_t c = d[pos + i];
            if (c == '.' || c == 0)
                goto plain_not;
            name[name_len++] = lower(c);
        }
        pos += length;
    }
    if (pos + 4 > n)
        goto plain_not;
    PyObject *qname = PyUnicode_DecodeLatin1(name, name_len, NULL);
    if (qname != NULL)
        result = Py_BuildValue("(IINnII)", u16(d), u16(d + 2), qname, pos, u16(d + pos),
                               u16(d + pos + 2));
    PyBuffer_Release(&buf);
    return result;
plain_not:
    PyBuffer_Release(&buf);
    return Py_NewRef(Py_None);
}

/* zero_run(data, pos, end) -> the first position in [pos, end) holding a non-zero byte, or end
 * (pos and end clipped to the data). */
static PyObject *
zero_run(PyObject *self, PyObject *args)
{
    Py_buffer buf;
    Py_ssize_t pos, end;
    if (!PyArg_ParseTuple(args, "y*nn", &buf, &pos, &end))
        return NULL;
    const uint8_t *p = buf.buf;
    if (end > buf.len)
        end = buf.len;
    if (pos < 0)
        pos = 0;
    while (pos + 8 <= end) {
        uint64_t word;
        memcpy(&word, p + pos, 8);
        if (word)
            break;
        pos += 8;
    }
    while (pos < end && p[pos] == 0)
        pos++;
    PyBuffer_Release(&buf);
    return PyLong_FromSsize_t(pos < end ? pos : end);
}

/* entropy(data) -> Shannon entropy in bits per byte (0.0 for no bytes). */
static PyObject *
entropy(PyObject *self, PyObject *arg)
{
    Py_buffer buf;
    if (PyObject_GetBuffer(arg, &buf, PyBUF_SIMPLE) < 0)
        return NULL;
    const uint8_t *p = buf.buf;
    Py_ssize_t n = buf.len;
    Py_ssize_t counts[256] = {0};
    for (Py_ssize_t i = 0; i < n; i++)
        counts[p[i]]++;
    PyBuffer_Release(&buf);
    if (n == 0)
        return PyFloat_FromDouble(0.0);
    double total = 0.0;
    for (int v = 0; v < 256; v++) {
        if (counts[v]) {
            double share = (double)counts[v] / (double)n;
            total += share * log2(share);
        }
    }
    return PyFloat_FromDouble(-total);
}

static PyMethodDef methods[] = {
    {"client_hello", client_hello, METH_VARARGS, "A plain ClientHello body's fields, or None."},
    {"dns_query", dns_query, METH_VARARGS, "A plain DNS query's fields, or None."},
    {"zero_run", zero_run, METH_VARARGS, "Where a run of zero bytes from pos ends."},
    {"entropy", entropy, METH_O, "Shannon entropy of the bytes, in bits per byte."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "gfwlab.proto._scan", "Byte loops of the censor's per-flow reads.",
    -1, methods,
};

PyMODINIT_FUNC
PyInit__scan(void)
{
    return PyModule_Create(&module);
}
