/* gfwlab._craft: the packets the censor forges, assembled in C.
 *
 * Every forged DNS answer is a UDP datagram and every reset a TCP segment, each with its IP
 * header and two checksums: with a blocklist of real size the engine makes one for nearly
 * every event (three answers a blocked query). gfwlab.packet.ip's build_udp and build_tcp sum
 * each checksum as a few big Python integers, about 1.5 us a packet compiled; here one pass
 * over the bytes.
 *
 * - udp(src, dst, sport, dport, payload, ttl, ip_id, df): build_udp's packet.
 * - tcp(src, dst, sport, dport, seq, ack, byte12, flags, window, options, payload, ttl, ip_id,
 *   df, bad_checksum): build_tcp's, with its options already padded and byte 12 (data offset
 *   and the NS flag) already made.
 *
 * Both are fast paths only: for anything build_udp and build_tcp would refuse or read another
 * way (an address that is not 4 or 16 bytes, the two of different families, a field out of
 * its range, an argument that is not bytes or an integer) they return None and the Python
 * builds the packet, or raises its error. tests/test_craft.py holds them to the Python.
 *
 * The checksum of data is its 16-bit words' sum modulo 0xFFFF, as the Python computes it
 * (gfwlab.packet.ip.checksum says why that is the Internet checksum): the sum of the fields
 * and the payload's big-endian words (an odd last byte is the high byte of a word) in 64 bits,
 * then one remainder.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define PROTO_TCP 6
#define PROTO_UDP 17

static uint64_t
words(const uint8_t *p, Py_ssize_t n)
{
    uint64_t sum = 0;
    Py_ssize_t i = 0;
    for (; i + 1 < n; i += 2)
        sum += ((uint32_t)p[i] << 8) | p[i + 1];
    if (i < n)
        sum += (uint32_t)p[i] << 8;
    return sum;
}

/* gfwlab.packet.ip._folded(total, True): the checksum of data whose words sum to total. */
static unsigned
folded(uint64_t total)
{
    unsigned rest = (unsigned)(total % 0xFFFF);
    return rest == 0 ? 0 : 0xFFFF - rest;
}

static inline void
put16(uint8_t *p, unsigned v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline void
put32(uint8_t *p, uint32_t v)
{
    put16(p, v >> 16);
    put16(p + 2, v & 0xFFFF);
}

/* The words of the two addresses (`alen` bytes each): their share of every checksum. */
static uint64_t
addr_words(PyObject *src, PyObject *dst, Py_ssize_t alen)
{
    return words((const uint8_t *)PyBytes_AS_STRING(src), alen)
           + words((const uint8_t *)PyBytes_AS_STRING(dst), alen);
}

/* A new packet: the IP header of a `body`-byte body, and room for the body, which the caller
 * writes at *body_at. `addrs` is addr_words(src, dst). */
static PyObject *
ip_packet(PyObject *src, PyObject *dst, Py_ssize_t alen, int proto, Py_ssize_t body,
          unsigned ttl, unsigned ip_id, int df, uint64_t addrs, uint8_t **body_at)
{
    Py_ssize_t hlen = alen == 4 ? 20 : 40;
    PyObject *packet = PyBytes_FromStringAndSize(NULL, hlen + body);
    if (packet == NULL)
        return NULL;
    uint8_t *out = (uint8_t *)PyBytes_AS_STRING(packet);
    *body_at = out + hlen;
    if (alen == 4) {
        unsigned frag = df ? 0x4000 : 0;
        uint64_t total = 0x4500 + 20 + (uint64_t)body + ip_id + frag + (ttl << 8) + proto + addrs;
        out[0] = 0x45;
        out[1] = 0;
        put16(out + 2, (unsigned)(20 + body));
        put16(out + 4, ip_id);
        put16(out + 6, frag);
        out[8] = (uint8_t)ttl;
        out[9] = (uint8_t)proto;
        put16(out + 10, folded(total));
        memcpy(out + 12, PyBytes_AS_STRING(src), 4);
        memcpy(out + 16, PyBytes_AS_STRING(dst), 4);
    }
    else {
        put32(out, 6u << 28);
        put16(out + 4, (unsigned)body);
        out[6] = (uint8_t)proto;
        out[7] = (uint8_t)ttl;
        memcpy(out + 8, PyBytes_AS_STRING(src), 16);
        memcpy(out + 24, PyBytes_AS_STRING(dst), 16);
    }
    return packet;
}

/* Whether the addresses make a header build_udp and build_tcp would make the same way, and
 * the body fits its length field (IPv4: with the header). */
static int
plain(Py_ssize_t alen, Py_ssize_t dlen, Py_ssize_t body)
{
    if (alen != dlen || (alen != 4 && alen != 16))
        return 0;
    return body <= (alen == 4 ? 0xFFFF - 20 : 0xFFFF);
}

static PyObject *
udp(PyObject *self, PyObject *args)
{
    PyObject *src, *dst, *payload;
    long long sport, dport, ttl, ip_id;
    int df;
    if (!PyArg_ParseTuple(args, "SSLLSLLp", &src, &dst, &sport, &dport, &payload, &ttl, &ip_id,
                          &df)) {
        PyErr_Clear(); /* the Python builds it, or raises its own error */
        Py_RETURN_NONE;
    }
    Py_ssize_t alen = PyBytes_GET_SIZE(src), n = PyBytes_GET_SIZE(payload);
    Py_ssize_t length = 8 + n;
    if (!plain(alen, PyBytes_GET_SIZE(dst), length) || sport < 0 || sport > 0xFFFF || dport < 0
        || dport > 0xFFFF || ttl < 0 || ttl > 0xFF || ip_id < 0 || ip_id > 0xFFFF)
        Py_RETURN_NONE;
    const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(payload);
    uint64_t addrs = addr_words(src, dst, alen);
    uint64_t total = addrs + PROTO_UDP + (uint64_t)length + (uint64_t)sport + (uint64_t)dport
                     + (uint64_t)length + words(p, n);
    unsigned csum = folded(total);
    if (csum == 0)
        csum = 0xFFFF; /* zero means "no checksum" in UDP */
    uint8_t *o;
    PyObject *out = ip_packet(src, dst, alen, PROTO_UDP, length, (unsigned)ttl, (unsigned)ip_id,
                              df, addrs, &o);
    if (out == NULL)
        return NULL;
    put16(o, (unsigned)sport);
    put16(o + 2, (unsigned)dport);
    put16(o + 4, (unsigned)length);
    put16(o + 6, csum);
    memcpy(o + 8, p, n);
    return out;
}

static PyObject *
tcp(PyObject *self, PyObject *args)
{
    PyObject *src, *dst, *options, *payload;
    long long sport, dport, seq, ack, byte12, flags, window, ttl, ip_id;
    int df, bad;
    if (!PyArg_ParseTuple(args, "SSLLLLLLLSSLLpp", &src, &dst, &sport, &dport, &seq, &ack,
                          &byte12, &flags, &window, &options, &payload, &ttl, &ip_id, &df,
                          &bad)) {
        PyErr_Clear(); /* the Python builds it, or raises its own error */
        Py_RETURN_NONE;
    }
    Py_ssize_t alen = PyBytes_GET_SIZE(src), nopt = PyBytes_GET_SIZE(options);
    Py_ssize_t n = PyBytes_GET_SIZE(payload);
    Py_ssize_t hlen = 20 + nopt, length = hlen + n;
    if (!plain(alen, PyBytes_GET_SIZE(dst), length) || nopt % 4 || sport < 0 || sport > 0xFFFF
        || dport < 0 || dport > 0xFFFF || seq < 0 || seq > 0xFFFFFFFFLL || ack < 0
        || ack > 0xFFFFFFFFLL || byte12 < 0 || byte12 > 0xFF || flags < 0 || flags > 0xFF
        || window < 0 || window > 0xFFFF || ttl < 0 || ttl > 0xFF || ip_id < 0 || ip_id > 0xFFFF)
        Py_RETURN_NONE;
    const uint8_t *opt = (const uint8_t *)PyBytes_AS_STRING(options);
    const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(payload);
    uint64_t addrs = addr_words(src, dst, alen);
    uint64_t total = addrs + PROTO_TCP + (uint64_t)length + (uint64_t)sport + (uint64_t)dport
                     + (uint64_t)seq + (uint64_t)ack + ((uint64_t)byte12 << 8) + (uint64_t)flags
                     + (uint64_t)window + words(p, n) + words(opt, nopt);
    unsigned csum = folded(total);
    if (bad)
        csum ^= 0xBEEF;
    uint8_t *o;
    PyObject *out = ip_packet(src, dst, alen, PROTO_TCP, length, (unsigned)ttl, (unsigned)ip_id,
                              df, addrs, &o);
    if (out == NULL)
        return NULL;
    put16(o, (unsigned)sport);
    put16(o + 2, (unsigned)dport);
    put32(o + 4, (uint32_t)seq);
    put32(o + 8, (uint32_t)ack);
    o[12] = (uint8_t)byte12;
    o[13] = (uint8_t)flags;
    put16(o + 14, (unsigned)window);
    put16(o + 16, csum);
    put16(o + 18, 0);
    memcpy(o + 20, opt, nopt);
    memcpy(o + 20 + nopt, p, n);
    return out;
}

static PyMethodDef methods[] = {
    {"udp", udp, METH_VARARGS, "build_udp's packet, or None (see _craft.pyi)."},
    {"tcp", tcp, METH_VARARGS, "build_tcp's packet, or None (see _craft.pyi)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "gfwlab._craft",
    "The packets the censor forges, assembled in C.", -1, methods,
};

PyMODINIT_FUNC
PyInit__craft(void)
{
    return PyModule_Create(&module);
}
