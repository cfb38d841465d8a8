/* gfwlab.proto._initial: a QUIC client Initial's protection removed, with OpenSSL's libcrypto.
 *
 * The censor decrypts the first datagram of every UDP flow that holds a client Initial (spec
 * §5: the GFW reads the SNI of QUIC Initials since 2024-04-07): derive the Initial keys from
 * the destination connection ID (RFC 9001 §5.2: HKDF-Extract with the version's salt, then
 * HKDF-Expand-Label four times, five HMAC-SHA256 in all), take off the header protection
 * (§5.4: AES-128-ECB on one 16-byte sample) and open the payload (§5.3: AES-128-GCM). Through
 * the `cryptography` package that was 20-25 µs an Initial, most of it the Python layers around
 * each cipher object and a cipher lookup for each; here the digest and ciphers are fetched once
 * and the whole is one call of 2-3 µs. gfwlab.proto.quic_build keeps the `cryptography`
 * implementation for building Initials and as the reference the tests compare this with
 * (tests/test_proto_quic.py).
 *
 * Only the cryptography is here: gfwlab.proto.quic reads the header, checks every length
 * (the sample and the tag fit the packet) and makes the anomalies; this reads within the
 * bounds it is given, and checks them again.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <string.h>

#define SHA256_LEN 32
#define SAMPLE_LEN 16
#define TAG_LEN 16
#define KEY_LEN 16
#define IV_LEN 12
#define LABEL_MAX 64

static EVP_MD *sha256;
static EVP_CIPHER *ecb, *gcm;
static EVP_MD_CTX *md_ctx;
static EVP_CIPHER_CTX *hp_ctx, *aead_ctx;

/* HMAC-SHA256 (RFC 2104) of msg under key (at most 64 bytes: the salt or a secret). */
static int
hmac(const uint8_t *key, size_t klen, const uint8_t *msg, size_t mlen, uint8_t out[SHA256_LEN])
{
    uint8_t pad[64], inner[SHA256_LEN];
    unsigned int got;
    if (klen > sizeof pad)
        return 0;
    for (int round = 0; round < 2; round++) {
        memset(pad, 0, sizeof pad);
        memcpy(pad, key, klen);
        for (size_t i = 0; i < sizeof pad; i++)
            pad[i] ^= round == 0 ? 0x36 : 0x5c;
        if (!EVP_DigestInit_ex2(md_ctx, sha256, NULL) || !EVP_DigestUpdate(md_ctx, pad, sizeof pad))
            return 0;
        if (round == 0) {
            if (!EVP_DigestUpdate(md_ctx, msg, mlen) || !EVP_DigestFinal_ex(md_ctx, inner, &got))
                return 0;
        } else if (!EVP_DigestUpdate(md_ctx, inner, SHA256_LEN) ||
                   !EVP_DigestFinal_ex(md_ctx, out, &got)) {
            return 0;
        }
    }
    return 1;
}

/* HKDF-Expand-Label with an empty context (RFC 8446 §7.1), SHA-256, length <= 32: one block,
 * T(1) = HMAC(secret, HkdfLabel | 0x01). */
static int
expand_label(const uint8_t secret[SHA256_LEN], const char *label, size_t llen, size_t length,
             uint8_t *out)
{
    uint8_t info[4 + 6 + LABEL_MAX + 1], block[SHA256_LEN];
    size_t n = 0;
    if (llen > LABEL_MAX || length > SHA256_LEN)
        return 0;
    info[n++] = 0;
    info[n++] = (uint8_t)length;
    info[n++] = (uint8_t)(6 + llen);
    memcpy(info + n, "tls13 ", 6);
    n += 6;
    memcpy(info + n, label, llen);
    n += llen;
    info[n++] = 0;    /* empty context */
    info[n++] = 0x01; /* HKDF-Expand's counter */
    if (!hmac(secret, SHA256_LEN, info, n, block))
        return 0;
    memcpy(out, block, length);
    return 1;
}

static PyObject *
crypto_error(const char *what)
{
    PyErr_Format(PyExc_RuntimeError, "libcrypto: %s failed", what);
    return NULL;
}

/* open_initial(datagram, pn_at, end, dcid, salt, key_label, iv_label, hp_label)
 *     -> (first_byte, packet_number, pn_len, payload | None)
 *
 * The Initial that starts the datagram, whose packet number begins at pn_at and whose packet
 * ends at end: its first byte and packet number with the header protection removed, the
 * packet number's length, and the decrypted payload (None: the AEAD tag does not match).
 * The caller has checked that pn_at + 4 + 16 <= end <= len(datagram) (the sample fits). */
static PyObject *
open_initial(PyObject *self, PyObject *args)
{
    Py_buffer dg, dcid, salt, labels[3];
    Py_ssize_t pn_at, end;
    PyObject *result = NULL;
    uint8_t initial[SHA256_LEN], client[SHA256_LEN], key[KEY_LEN], iv[IV_LEN], hp[KEY_LEN];
    uint8_t mask[SAMPLE_LEN + 16], nonce[IV_LEN], *aad = NULL;
    int outl, pn_len;
    uint64_t pn = 0;
    if (!PyArg_ParseTuple(args, "y*nny*y*y*y*y*", &dg, &pn_at, &end, &dcid, &salt, &labels[0],
                          &labels[1], &labels[2]))
        return NULL;
    const uint8_t *d = dg.buf;
    if (pn_at < 1 || end > dg.len || pn_at + 4 + SAMPLE_LEN > end) {
        PyErr_SetString(PyExc_ValueError, "open_initial: no room for the sample");
        goto done;
    }
    /* RFC 9001 §5.2: initial_secret = HKDF-Extract(salt, dcid); the client's secret and its
     * key, IV and header protection key by HKDF-Expand-Label. */
    if (!hmac(salt.buf, (size_t)salt.len, dcid.buf, (size_t)dcid.len, initial) ||
        !expand_label(initial, "client in", 9, SHA256_LEN, client) ||
        !expand_label(client, labels[0].buf, (size_t)labels[0].len, KEY_LEN, key) ||
        !expand_label(client, labels[1].buf, (size_t)labels[1].len, IV_LEN, iv) ||
        !expand_label(client, labels[2].buf, (size_t)labels[2].len, KEY_LEN, hp)) {
        result = crypto_error("HKDF");
        goto done;
    }
    /* §5.4.3: mask = AES-ECB(hp, sample), the sample 4 bytes after the packet number's start */
    if (!EVP_EncryptInit_ex2(hp_ctx, ecb, hp, NULL, NULL) ||
        !EVP_CIPHER_CTX_set_padding(hp_ctx, 0) ||
        !EVP_EncryptUpdate(hp_ctx, mask, &outl, d + pn_at + 4, SAMPLE_LEN) || outl != SAMPLE_LEN) {
        result = crypto_error("header protection");
        goto done;
    }
    uint8_t first = d[0] ^ (mask[0] & 0x0f); /* §5.4.1: a long header's low four bits */
    pn_len = (first & 0x03) + 1;
    for (int i = 0; i < pn_len; i++)
        pn = (pn << 8) | (uint8_t)(d[pn_at + i] ^ mask[1 + i]);
    Py_ssize_t body = pn_at + pn_len;
    if (end - body < TAG_LEN) {
        PyErr_SetString(PyExc_ValueError, "open_initial: no room for the tag");
        goto done;
    }
    /* §5.3: nonce = IV xor packet number; the header, unprotected, is the associated data */
    memcpy(nonce, iv, IV_LEN);
    for (int i = 0; i < 8; i++)
        nonce[IV_LEN - 1 - i] ^= (uint8_t)(pn >> (8 * i));
    aad = PyMem_Malloc((size_t)body);
    if (aad == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    memcpy(aad, d, (size_t)body);
    aad[0] = first;
    for (int i = 0; i < pn_len; i++)
        aad[pn_at + i] = (uint8_t)(pn >> (8 * (pn_len - 1 - i)));
    Py_ssize_t clen = end - body - TAG_LEN;
    PyObject *payload = PyBytes_FromStringAndSize(NULL, clen);
    if (payload == NULL)
        goto done;
    uint8_t *out = (uint8_t *)PyBytes_AS_STRING(payload);
    int ok = EVP_DecryptInit_ex2(aead_ctx, gcm, key, nonce, NULL) &&
             EVP_DecryptUpdate(aead_ctx, NULL, &outl, aad, (int)body) &&
             EVP_DecryptUpdate(aead_ctx, out, &outl, d + body, (int)clen) &&
             EVP_CIPHER_CTX_ctrl(aead_ctx, EVP_CTRL_GCM_SET_TAG, TAG_LEN,
                                 (void *)(d + end - TAG_LEN));
    if (!ok) {
        Py_DECREF(payload);
        result = crypto_error("AES-GCM");
        goto done;
    }
    if (EVP_DecryptFinal_ex(aead_ctx, out + outl, &outl) <= 0) { /* the tag does not match */
        Py_DECREF(payload);
        payload = Py_NewRef(Py_None);
    }
    result = Py_BuildValue("(iKiN)", first, (unsigned long long)pn, pn_len, payload);
done:
    PyMem_Free(aad);
    PyBuffer_Release(&dg);
    PyBuffer_Release(&dcid);
    PyBuffer_Release(&salt);
    for (int i = 0; i < 3; i++)
        PyBuffer_Release(&labels[i]);
    return result;
}

static PyMethodDef methods[] = {
    {"open_initial", open_initial, METH_VARARGS, "A client Initial opened (see _initial.pyi)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "gfwlab.proto._initial",
    "A QUIC client Initial's protection removed, with OpenSSL's libcrypto.", -1, methods,
};

PyMODINIT_FUNC
PyInit__initial(void)
{
    sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    ecb = EVP_CIPHER_fetch(NULL, "AES-128-ECB", NULL);
    gcm = EVP_CIPHER_fetch(NULL, "AES-128-GCM", NULL);
    md_ctx = EVP_MD_CTX_new();
    hp_ctx = EVP_CIPHER_CTX_new();
    aead_ctx = EVP_CIPHER_CTX_new();
    if (!sha256 || !ecb || !gcm || !md_ctx || !hp_ctx || !aead_ctx) {
        PyErr_SetString(PyExc_ImportError,
                        "libcrypto: SHA-256, AES-128-ECB or AES-128-GCM missing");
        return NULL;
    }
    return PyModule_Create(&module);
}
