/* gfwlab._native: the offline index's loops over every record of a capture, compiled.
 *
 * The fast path (gfwlab.offline.fast) reads every record of a capture once to find the few
 * packets the engine must see. Most of that reading is one pass over millions of records, the
 * same few operations on each: find the next record, read a timestamp, read the IP and
 * transport headers, make a flow key, and group packets into flow lives. In NumPy each step
 * is a dozen passes over arrays of the capture's length, and the record walk (each record's
 * length says where the next one is) cannot be vectorised at all. Here each is one pass.
 *
 * Every function reads and writes buffers the caller allocated (NumPy arrays, the capture's
 * memory map) and checks every read against the buffer's length: a malformed capture gives the
 * same fields as gfwlab.packet.ip.parse would (or marks the packet for it), never a read out
 * of bounds. The Python callers (gfwlab.packet.scan, gfwlab.offline.index) say what each
 * field means; the types are in _native.pyi.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* A buffer argument with its length in elements of `item` bytes. */
typedef struct {
    Py_buffer view;
    Py_ssize_t n;
} Arg;

static int
need(const char *what, Py_buffer *view, Py_ssize_t item, Py_ssize_t n)
{
    if (view->len != item * n) {
        PyErr_Format(PyExc_ValueError, "%s: %zd bytes, expected %zd", what, view->len, item * n);
        return -1;
    }
    return 0;
}

static inline uint32_t
u32_at(const uint8_t *p, int big)
{
    if (big)
        return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
    return ((uint32_t)p[3] << 24) | ((uint32_t)p[2] << 16) | ((uint32_t)p[1] << 8) | p[0];
}

/* Packets this many ahead are asked for early (ahead()): the packets' places are known, and
 * reading each one's first bytes is a wait for memory (the records are far apart: the
 * hardware's own prefetching does not follow them). */
#define AHEAD 8

/* Ask for the cache lines of p[at:at+n] (n <= 128) before they are read (nothing outside the
 * buffer). Always inlined: a function that only prefetches has no effect the compiler counts,
 * and GCC drops the calls to one it does not inline (prefetches and all). */
static inline __attribute__((always_inline)) void
ahead(const uint8_t *p, Py_ssize_t size, int64_t at, int64_t n)
{
    if (at >= 0 && at + n <= size) {
        __builtin_prefetch(p + at);
        if (n > 64)
            __builtin_prefetch(p + at + 64);
        __builtin_prefetch(p + at + n - 1);
    }
}

/* A record chain is walked in file order, but each record's place is known only once the one
 * before it is read: every record header is a wait for memory, and the hardware's prefetching
 * stops at each 4 KiB page. So the walks ask for every cache line of the next STREAM bytes as
 * they go (each line once: *pf is how far they have asked). Measured on a realistic capture's
 * 1.3M records: the walk 0.15 -> 0.085 s with its pages mapped, 0.22 -> 0.155 s without;
 * windows of 2 to 8 KiB did as well, 1 KiB and 64 KiB worse. */
#define STREAM 4096

static inline __attribute__((always_inline)) void
stream(const uint8_t *p, Py_ssize_t size, Py_ssize_t off, Py_ssize_t *pf)
{
    Py_ssize_t lim = off + STREAM < size ? off + STREAM : size;
    if (*pf < off)
        *pf = off;
    for (; *pf < lim; *pf += 64)
        __builtin_prefetch(p + *pf);
}

/* walk(buf, off, stop, size, hlen, big, cap, div, out, ts) -> (count, off, broken)
 *
 * A classic pcap's record chain from `off`: while off <= stop, the record at off (a header of
 * hlen bytes whose caplen is at off + 8, then caplen bytes) is whole if caplen <= cap and it
 * ends within size; its offset is written to out, its timestamp to ts, and off moves past it.
 * Stops at the first broken record (broken is then True), past stop, or when out is full.
 * The timestamp is sec + frac / div as the capture reader computes it: the same IEEE operations
 * (seconds and fraction as doubles, one division, one addition). It is read here, in the same
 * cache line as the length, because a second pass over the records costs as much as the walk. */
static PyObject *
walk(PyObject *self, PyObject *args)
{
    Py_buffer buf, out, ts;
    Py_ssize_t off, stop, size, hlen, cap;
    int big;
    double div;
    if (!PyArg_ParseTuple(args, "y*nnnnpndw*w*", &buf, &off, &stop, &size, &hlen, &big, &cap,
                          &div, &out, &ts))
        return NULL;
    PyObject *result = NULL;
    if (size > buf.len || hlen < 12 || off < 0 || out.len % 8 || ts.len != out.len) {
        PyErr_SetString(PyExc_ValueError, "walk: bad framing arguments");
        goto done;
    }
    const uint8_t *p = buf.buf;
    int64_t *offs = out.buf;
    double *t = ts.buf;
    Py_ssize_t room = out.len / 8, count = 0;
    int broken = 0;
    if (stop > size - hlen)
        stop = size - hlen;
    Py_ssize_t pf = off;
    while (off <= stop && count < room) {
        stream(p, size, off, &pf);
        const uint8_t *rec = p + off;
        Py_ssize_t caplen = (Py_ssize_t)u32_at(rec + 8, big);
        Py_ssize_t end = off + hlen + caplen;
        if (caplen > cap || end > size) {
            broken = 1;
            break;
        }
        double sec = (double)u32_at(rec, big), frac = (double)u32_at(rec + 4, big);
        t[count] = sec + frac / div;
        offs[count++] = off;
        off = end;
    }
    result = Py_BuildValue("nnO", count, off, broken ? Py_True : Py_False);
done:
    PyBuffer_Release(&buf);
    PyBuffer_Release(&out);
    PyBuffer_Release(&ts);
    return result;
}

/* Link modes (gfwlab.packet.link): how a frame's link-layer header is removed. */
enum { MODE_ETH, MODE_RAW, MODE_SLL, MODE_SLL2, MODE_NULL, MODE_LOOP };

/* Where the IP packet inside the frame p[start:end] begins, or -1 if the frame carries
 * something else: gfwlab.packet.link.ip_offset, rule for rule (Ethernet with any number of
 * VLAN tags, Linux cooked v1 and v2, BSD loopback in either byte order). */
static int64_t
ip_at(int mode, const uint8_t *p, int64_t start, int64_t end)
{
    int64_t n = end - start, off;
    unsigned etype;
    if (mode == MODE_RAW)
        return start;
    if (mode == MODE_ETH) {
        if (n < 14)
            return -1;
        etype = ((unsigned)p[start + 12] << 8) | p[start + 13];
        off = start + 14;
        while (etype == 0x8100 || etype == 0x88A8 || etype == 0x9100) {
            if (off + 4 > end)
                return -1;
            etype = ((unsigned)p[off + 2] << 8) | p[off + 3];
            off += 4;
        }
    } else if (mode == MODE_SLL) {
        if (n < 16)
            return -1;
        etype = ((unsigned)p[start + 14] << 8) | p[start + 15];
        off = start + 16;
    } else if (mode == MODE_SLL2) {
        if (n < 20)
            return -1;
        etype = ((unsigned)p[start] << 8) | p[start + 1];
        off = start + 20;
    } else if (mode == MODE_NULL || mode == MODE_LOOP) {
        unsigned family;
        if (n < 4)
            return -1;
        if (mode == MODE_LOOP) {
            family = ((unsigned)p[start + 2] << 8) | p[start + 3];
        } else {
            /* The capturing machine's byte order: whichever end holds the non-zero bytes. */
            family = p[start] | ((unsigned)p[start + 1] << 8);
            if (family == 0)
                family = ((unsigned)p[start + 2] << 8) | p[start + 3];
        }
        return (family == 2 || family == 24 || family == 28 || family == 30) ? start + 4 : -1;
    } else {
        return -1;
    }
    return (etype == 0x0800 || etype == 0x86DD) ? off : -1;
}

/* links(buf, mode, start, end, ip): ip_at for each frame buf[start[i]:end[i]]; a frame outside
 * the buffer carries nothing (-1). */
static PyObject *
links(PyObject *self, PyObject *args)
{
    Py_buffer buf, start, end, ip;
    int mode;
    if (!PyArg_ParseTuple(args, "y*iy*y*w*", &buf, &mode, &start, &end, &ip))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = start.len / 8;
    if (need("links start", &start, 8, n) || need("links end", &end, 8, n) ||
        need("links ip", &ip, 8, n))
        goto done;
    const uint8_t *p = buf.buf;
    const int64_t *st = start.buf, *en = end.buf;
    int64_t *out = ip.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i + AHEAD < n)
            ahead(p, buf.len, st[i + AHEAD], 20);
        out[i] = (st[i] >= 0 && st[i] <= en[i] && en[i] <= buf.len) ? ip_at(mode, p, st[i], en[i])
                                                                     : -1;
    }
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&buf);
    PyBuffer_Release(&start);
    PyBuffer_Release(&end);
    PyBuffer_Release(&ip);
    return result;
}

/* epbs(buf, off, stop, size, big, modes, units, tsoffset, ts, start, end) -> (count, off)
 *
 * A pcapng's run of Enhanced Packet Blocks from `off` (in a section of byte order `big`), each
 * well framed and carrying an IP packet: while off + 28 <= size and off < stop, the block at
 * off is taken if it is an EPB of a known interface (iid < the interfaces given) whose captured
 * bytes fit (caplen + 32 <= blen <= size - off), whose length is a multiple of 4 and agrees with
 * its trailing copy, and whose frame carries IP (ip_at, by its interface's link mode); its
 * timestamp, IP packet start and end go to ts, start and end. Any other block stops the run
 * (the caller reads it, and every framing problem, the Python way: gfwlab.packet.pcapng). The
 * timestamp is the Python one's: the 64-bit count to a double, divided by the interface's units
 * (a double), plus its offset in seconds (an integer, to a double). */
static PyObject *
epbs(PyObject *self, PyObject *args)
{
    Py_buffer buf, modes, units, tsoff, ts, start, end;
    Py_ssize_t off, stop, size;
    int big;
    if (!PyArg_ParseTuple(args, "y*nnnpy*y*y*w*w*w*", &buf, &off, &stop, &size, &big, &modes,
                          &units, &tsoff, &ts, &start, &end))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n_if = modes.len, room = ts.len / 8;
    if (need("epbs units", &units, 8, n_if) || need("epbs tsoffset", &tsoff, 8, n_if) ||
        need("epbs ts", &ts, 8, room) || need("epbs start", &start, 8, room) ||
        need("epbs end", &end, 8, room))
        goto done;
    if (size > buf.len || off < 0) {
        PyErr_SetString(PyExc_ValueError, "epbs: bad offsets");
        goto done;
    }
    const uint8_t *p = buf.buf, *md = modes.buf;
    const double *un = units.buf;
    const int64_t *to = tsoff.buf;
    double *t = ts.buf;
    int64_t *st = start.buf, *en = end.buf;
    Py_ssize_t count = 0, pf = off;
    while (off + 28 <= size && off < stop && count < room) {
        stream(p, size, off, &pf);
        const uint8_t *b = p + off;
        uint64_t btype = u32_at(b, big), blen = u32_at(b + 4, big), iid = u32_at(b + 8, big);
        uint64_t caplen = u32_at(b + 20, big);
        if (btype != 6 || iid >= (uint64_t)n_if || caplen + 32 > blen ||
            blen > (uint64_t)(size - off) || (blen & 3) || u32_at(b + blen - 4, big) != blen)
            break;
        int64_t from = off + 28, to_end = from + (int64_t)caplen;
        int64_t ip = ip_at(md[iid], p, from, to_end);
        if (ip < 0)
            break; /* a skipped packet: the caller counts it */
        uint64_t stamp = ((uint64_t)u32_at(b + 12, big) << 32) | u32_at(b + 16, big);
        t[count] = (double)stamp / un[iid] + (double)to[iid];
        st[count] = ip;
        en[count] = to_end;
        count++;
        off += (Py_ssize_t)blen;
    }
    result = Py_BuildValue("nn", count, off);
done:
    PyBuffer_Release(&buf);
    PyBuffer_Release(&modes);
    PyBuffer_Release(&units);
    PyBuffer_Release(&tsoff);
    PyBuffer_Release(&ts);
    PyBuffer_Release(&start);
    PyBuffer_Release(&end);
    return result;
}

#define HEAD 80 /* bytes of a packet classify may read: TCP flags behind a 60-byte IPv4 header */

/* classify(buf, start, length, flow, proto, flags, payload_len, src, dst)
 *
 * Each packet's flow fields from its first HEAD bytes (zeros past the buffer's end; bytes past
 * the packet's length but within the buffer are read, and never decide a field). The rules are
 * those of gfwlab.packet.ip.parse for a packet it can read without its extension-header walk:
 * an IPv4 packet whose header fits and is not a fragment, or an IPv6 packet whose next header
 * is TCP or UDP. An IPv6 packet with any other next header gets proto 255: the caller parses it
 * with the engine's parser. flow: a whole TCP or UDP packet (TCP: a header of at least 20
 * bytes that fits; UDP: 8 bytes). src and dst: three words each (address high, address low,
 * family << 32 | port); IPv4 addresses are the low word. */
static PyObject *
classify(PyObject *self, PyObject *args)
{
    Py_buffer buf, start, length, flow, proto, flags, plen, src, dst;
    if (!PyArg_ParseTuple(args, "y*y*y*w*w*w*w*w*w*", &buf, &start, &length, &flow, &proto,
                          &flags, &plen, &src, &dst))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = start.len / 8;
    if (need("classify start", &start, 8, n) || need("classify length", &length, 8, n) ||
        need("classify flow", &flow, 1, n) || need("classify proto", &proto, 1, n) ||
        need("classify flags", &flags, 2, n) || need("classify payload_len", &plen, 8, n) ||
        need("classify src", &src, 24, n) || need("classify dst", &dst, 24, n))
        goto done;
    const uint8_t *p = buf.buf;
    const int64_t *st = start.buf, *ln = length.buf;
    uint8_t *fo = flow.buf, *po = proto.buf;
    uint16_t *fl = flags.buf;
    int64_t *pl = plen.buf;
    uint64_t *so = src.buf, *dso = dst.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint8_t h[HEAD];
        int64_t s = st[i], len = ln[i];
        if (i + AHEAD < n)
            ahead(p, buf.len, st[i + AHEAD], HEAD);
        if (s >= 0 && s + HEAD <= buf.len) {
            memcpy(h, p + s, HEAD);
        } else {
            memset(h, 0, HEAD);
            for (int k = 0; k < HEAD; k++)
                if (s >= 0 && s + k < buf.len)
                    h[k] = p[s + k];
        }
#define B(k) ((int64_t)h[(k)])
#define BE16(k) ((B(k) << 8) | B((k) + 1))
        int64_t b0 = B(0), version = len > 0 ? b0 >> 4 : 0;
        int v4 = version == 4 && len >= 20, v6 = version == 6 && len >= 40;
        int64_t ihl = (b0 & 0x0F) * 4, total = BE16(2), frag = BE16(6) & 0x3FFF, pay = BE16(4);
        int64_t pr = v4 ? B(9) : (v6 ? B(6) : 0);
        int64_t l4 = v4 ? ihl : 40;
        int64_t eff = v4 ? (len < total ? len : total)
                         : (pay > 0 ? (len < 40 + pay ? len : 40 + pay) : len);
        int simple = pr == 6 || pr == 17;
        int ok_ip = (v4 && ihl >= 20 && ihl <= len && total >= ihl && frag == 0) || (v6 && simple);
        int tcp = ok_ip && pr == 6, udp = ok_ip && pr == 17;
        int64_t off_byte = B(l4 + 12), hl = (off_byte >> 4) * 4;
        tcp = tcp && eff - l4 >= 20 && hl >= 20 && l4 + hl <= eff;
        udp = udp && eff - l4 >= 8;
        int is_flow = tcp || udp;
        fo[i] = (uint8_t)is_flow;
        fl[i] = (uint16_t)(tcp ? (B(l4 + 13) | ((off_byte & 1) << 8)) : 0);
        int64_t ulen = BE16(l4 + 4);
        int64_t udp_end = (ulen >= 8 && ulen <= eff - l4) ? l4 + ulen : eff;
        pl[i] = tcp ? eff - l4 - hl : (udp ? udp_end - l4 - 8 : 0);
        uint64_t sport = is_flow ? (uint64_t)BE16(l4) : 0, dport = is_flow ? (uint64_t)BE16(l4 + 2) : 0;
        uint64_t *sw = so + 3 * i, *dw = dso + 3 * i;
        sw[0] = sw[1] = dw[0] = dw[1] = 0;
        if (is_flow && v4) {
            sw[1] = (uint64_t)((BE16(12) << 16) | BE16(14));
            dw[1] = (uint64_t)((BE16(16) << 16) | BE16(18));
        } else if (is_flow && v6) {
            for (int k = 0; k < 8; k++) {
                sw[0] = (sw[0] << 8) | h[8 + k];
                sw[1] = (sw[1] << 8) | h[16 + k];
                dw[0] = (dw[0] << 8) | h[24 + k];
                dw[1] = (dw[1] << 8) | h[32 + k];
            }
        }
        int unsure = version == 6 && len >= 40 && !simple;
        po[i] = (uint8_t)(unsure ? 255 : pr);
        uint64_t fam = (uint64_t)(v6 ? 6 : 4) << 32;
        sw[2] = sport | fam;
        dw[2] = dport | fam;
#undef B
#undef BE16
    }
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&buf);
    PyBuffer_Release(&start);
    PyBuffer_Release(&length);
    PyBuffer_Release(&flow);
    PyBuffer_Release(&proto);
    PyBuffer_Release(&flags);
    PyBuffer_Release(&plen);
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return result;
}

#define KEY 7 /* words of a flow key: protocol, then the lower and the higher endpoint */

/* Packet i's direction-independent flow key, (protocol, lower endpoint, higher endpoint),
 * endpoints (three words each) compared word by word; returns whether its source is the lower
 * one (equal endpoints: it is). */
static inline int
key_of(const uint8_t *pr, const uint64_t *src, const uint64_t *dst, Py_ssize_t i, uint64_t *row)
{
    const uint64_t *a = src + 3 * i, *b = dst + 3 * i;
    int low = a[0] != b[0] ? a[0] < b[0] : (a[1] != b[1] ? a[1] < b[1] : a[2] <= b[2]);
    if (row != NULL) {
        row[0] = pr[i];
        memcpy(row + 1, low ? a : b, 24);
        memcpy(row + 4, low ? b : a, 24);
    }
    return low;
}

/* flow_keys(proto, src, dst, key, lower): each packet's flow key (key_of) and whether its
 * source is the key's lower endpoint; key may be empty (only lower is wanted). */
static PyObject *
flow_keys(PyObject *self, PyObject *args)
{
    Py_buffer proto, src, dst, key, lower;
    if (!PyArg_ParseTuple(args, "y*y*y*w*w*", &proto, &src, &dst, &key, &lower))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = proto.len;
    if (need("flow_keys src", &src, 24, n) || need("flow_keys dst", &dst, 24, n) ||
        (key.len != 0 && need("flow_keys key", &key, 8 * KEY, n)) ||
        need("flow_keys lower", &lower, 1, n))
        goto done;
    uint64_t *k = key.len ? key.buf : NULL;
    uint8_t *lo = lower.buf;
    for (Py_ssize_t i = 0; i < n; i++)
        lo[i] = (uint8_t)key_of(proto.buf, src.buf, dst.buf, i, k ? k + KEY * i : NULL);
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&proto);
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    PyBuffer_Release(&key);
    PyBuffer_Release(&lower);
    return result;
}

static inline uint64_t
mix_row(const uint64_t *row)
{
    uint64_t h = 0x9E3779B97F4A7C15ULL;
    for (int j = 0; j < KEY; j++) {
        h ^= row[j];
        h *= 0xBF58476D1CE4E5B9ULL;
        h ^= h >> 31;
    }
    return h;
}

/* One flow key seen by lives(): the key, the timestamp of its last packet and that packet's
 * life. Kept apart from the per-packet arrays, so that finding a packet's key reads this small
 * dense table (a few MB for a capture's distinct keys) and not the previous packet's fields at
 * a random place in arrays of the whole capture. */
typedef struct {
    uint64_t key[KEY];
    double last;
    int64_t life;
} Seen;

/* A slot of lives()' table: 0 empty, else the top 32 bits of the key's hash above 1 + its index
 * in `seen`, so that a probe of another key's slot is told apart without reading that key. */
static inline uint64_t
slot_of(uint64_t h, int64_t e)
{
    return (h >> 32 << 32) | (uint64_t)(e + 1);
}

/* Grow the open-addressed slots to `slots` and place every seen key again. */
static uint64_t *
regrow(uint64_t *old, size_t slots, const Seen *seen, int64_t used)
{
    uint64_t *table = PyMem_Calloc(slots, sizeof(uint64_t));
    if (table == NULL)
        return NULL;
    for (int64_t e = 0; e < used; e++) {
        uint64_t h = mix_row(seen[e].key);
        size_t at = (size_t)h & (slots - 1);
        while (table[at])
            at = (at + 1) & (slots - 1);
        table[at] = slot_of(h, e);
    }
    PyMem_Free(old);
    return table;
}

/* lives(proto, src, dst, keyed, ts, tcp_timeout, udp_timeout, life_of, pos, first, count,
 *       final_ts, life_keyed) -> number of lives
 *
 * Groups packets into flow lives in one pass in file order: a keyed packet goes on the life of
 * the last packet with the same flow key (key_of) if it came less than its protocol's timeout
 * after it (TCP: tcp_timeout, else udp_timeout; the difference of the two timestamps, which may
 * be negative in a capture out of time order), and starts a new life otherwise; a packet
 * outside any flow is a life alone. Lives are numbered by their first packet's file order. Per
 * packet: its life and its position in it; per life (the first `lives` entries): its first
 * packet, its number of packets, its last packet's timestamp and whether it is keyed. The keys
 * seen are held in a table sized by their number (doubled as it fills), not by the packets'. */
static PyObject *
lives(PyObject *self, PyObject *args)
{
    Py_buffer proto, src, dst, keyed, ts, life_of, pos, first, count, final_ts, life_keyed;
    double tcp_timeout, udp_timeout;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*ddw*w*w*w*w*w*", &proto, &src, &dst, &keyed, &ts,
                          &tcp_timeout, &udp_timeout, &life_of, &pos, &first, &count, &final_ts,
                          &life_keyed))
        return NULL;
    PyObject *result = NULL;
    uint64_t *table = NULL;
    Seen *seen = NULL;
    Py_ssize_t n = keyed.len;
    if (need("lives proto", &proto, 1, n) || need("lives src", &src, 24, n) ||
        need("lives dst", &dst, 24, n) || need("lives ts", &ts, 8, n) ||
        need("lives life_of", &life_of, 8, n) || need("lives pos", &pos, 8, n) ||
        need("lives first", &first, 8, n) || need("lives count", &count, 8, n) ||
        need("lives final_ts", &final_ts, 8, n) || need("lives life_keyed", &life_keyed, 1, n))
        goto done;
    /* Keys held: at most half the slots. Room for as many keys as packets, up to 65,536 at
     * first (5 MB); a capture with more grows the table. */
    size_t slots = 16;
    while (slots < 2 * (size_t)n && slots < ((size_t)1 << 17))
        slots <<= 1;
    size_t room = slots / 2;
    int64_t used = 0;
    table = PyMem_Calloc(slots, sizeof(uint64_t));
    seen = PyMem_Malloc(room * sizeof(Seen));
    if (table == NULL || seen == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    const uint8_t *pr = proto.buf, *kd = keyed.buf;
    const uint64_t *s = src.buf, *d = dst.buf;
    const double *t = ts.buf;
    int64_t *lo = life_of.buf, *ps = pos.buf, *fi = first.buf, *co = count.buf;
    double *ft = final_ts.buf;
    uint8_t *lk = life_keyed.buf;
    int64_t m = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t life = -1;
        Seen *entry = NULL;
        if (kd[i]) {
            uint64_t row[KEY];
            key_of(pr, s, d, i, row);
            uint64_t h = mix_row(row);
            size_t at = (size_t)h & (slots - 1);
            while (table[at]) {
                if (table[at] >> 32 == h >> 32 &&
                    memcmp(seen[(uint32_t)table[at] - 1].key, row, sizeof row) == 0)
                    break;
                at = (at + 1) & (slots - 1);
            }
            if (table[at]) {
                entry = &seen[(uint32_t)table[at] - 1];
                double timeout = pr[i] == 6 ? tcp_timeout : udp_timeout;
                if (t[i] - entry->last < timeout)
                    life = entry->life;
            }
            else {
                if ((size_t)used == room) {
                    Seen *more = PyMem_Realloc(seen, 2 * room * sizeof(Seen));
                    if (more == NULL) {
                        PyErr_NoMemory();
                        goto done;
                    }
                    seen = more;
                    room *= 2;
                    slots *= 2;
                    uint64_t *grown = regrow(table, slots, seen, used);
                    if (grown == NULL) {
                        PyErr_NoMemory();
                        goto done;
                    }
                    table = grown;
                    at = (size_t)h & (slots - 1);
                    while (table[at])
                        at = (at + 1) & (slots - 1);
                }
                entry = &seen[used];
                memcpy(entry->key, row, sizeof row);
                table[at] = slot_of(h, used++);
            }
        }
        if (life < 0) {
            life = m++;
            fi[life] = i;
            co[life] = 0;
            lk[life] = kd[i] ? 1 : 0;
        }
        if (entry != NULL) {
            entry->last = t[i];
            entry->life = life;
        }
        lo[i] = life;
        ps[i] = co[life]++;
        ft[life] = t[i];
    }
    result = PyLong_FromLongLong(m);
done:
    PyMem_Free(table);
    PyMem_Free(seen);
    PyBuffer_Release(&proto);
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    PyBuffer_Release(&keyed);
    PyBuffer_Release(&ts);
    PyBuffer_Release(&life_of);
    PyBuffer_Release(&pos);
    PyBuffer_Release(&first);
    PyBuffer_Release(&count);
    PyBuffer_Release(&final_ts);
    PyBuffer_Release(&life_keyed);
    return result;
}

static PyMethodDef methods[] = {
    {"walk", walk, METH_VARARGS, "A classic pcap's record chain (see _native.pyi)."},
    {"links", links, METH_VARARGS, "Where frames' IP packets begin (see _native.pyi)."},
    {"epbs", epbs, METH_VARARGS, "A pcapng's run of plain packet blocks (see _native.pyi)."},
    {"classify", classify, METH_VARARGS, "Packets' flow fields (see _native.pyi)."},
    {"flow_keys", flow_keys, METH_VARARGS, "Direction-independent flow keys (see _native.pyi)."},
    {"lives", lives, METH_VARARGS, "Packets grouped into flow lives (see _native.pyi)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "gfwlab._native",
    "The offline index's loops over every record of a capture, compiled.", -1, methods,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    return PyModule_Create(&module);
}
