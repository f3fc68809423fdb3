/* SPDX-License-Identifier: Apache-2.0 */
/* The EAP peer: contract and state diagram in eap.h. */
#include "eap.h"

#include <m2mvpn/m2mvpn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/secmem.h"
#include "crypto/crypto.h"
#include "crypto/crypto_legacy.h"

#define EAP_CODE_REQUEST 1
#define EAP_CODE_RESPONSE 2
#define EAP_CODE_SUCCESS 3
#define EAP_CODE_FAILURE 4

#define MSCHAP_OP_CHALLENGE 1
#define MSCHAP_OP_RESPONSE 2
#define MSCHAP_OP_SUCCESS 3
#define MSCHAP_OP_FAILURE 4

struct eap_peer {
    eap_method method;
    eap_peer_state state;
    char identity[256];
    char *password;            /* secure copy */
    size_t password_len;
    /* MSCHAPv2 exchange, kept from the Response to the Success check */
    uint8_t ms_id;
    uint8_t auth_challenge[16];
    uint8_t peer_challenge[16];
    uint8_t nt_response[24];
    uint8_t nt_hash[16];
    uint8_t msk[EAP_MSK_MAX];
    size_t msk_len;
    bool refused;              /* the gateway refused the credentials */
};

static const char *const state_names[] = {
    [EAP_PEER_START] = "START",
    [EAP_PEER_IDENTITY_SENT] = "IDENTITY_SENT",
    [EAP_PEER_METHOD] = "METHOD",
    [EAP_PEER_SUCCESS_ACKED] = "SUCCESS_ACKED",
    [EAP_PEER_DONE] = "DONE",
    [EAP_PEER_FAILED] = "FAILED",
};

const char *eap_peer_state_name(eap_peer_state st)
{
    return (unsigned)st < sizeof(state_names) / sizeof(state_names[0]) ? state_names[st] : "?";
}

const char *eap_method_name(eap_method m)
{
    return m == EAP_METHOD_MSCHAPV2 ? "mschapv2" : m == EAP_METHOD_MD5 ? "md5" : "?";
}

const char *eap_type_name(unsigned type)
{
    switch (type) {
    case EAP_TYPE_IDENTITY: return "Identity";
    case EAP_TYPE_NOTIFICATION: return "Notification";
    case EAP_TYPE_NAK: return "Nak";
    case EAP_TYPE_MD5: return "MD5-Challenge";
    case 13: return "TLS";
    case 21: return "TTLS";
    case 23: return "AKA";
    case 25: return "PEAP";
    case EAP_TYPE_MSCHAPV2: return "MSCHAPv2";
    case 254: return "Expanded";
    default: return "unknown";
    }
}

static unsigned method_type(eap_method m)
{
    return m == EAP_METHOD_MSCHAPV2 ? EAP_TYPE_MSCHAPV2 : EAP_TYPE_MD5;
}

int eap_peer_new(eap_method method, const char *identity, const char *password, size_t password_len,
                 eap_peer **ret)
{
    if (!identity || !password || !ret || (method != EAP_METHOD_MSCHAPV2 && method != EAP_METHOD_MD5))
        return M2MVPN_E_INVAL;
    size_t il = strlen(identity);
    if (il == 0 || il > 255 || password_len == 0 || password_len > 256)
        return M2MVPN_E_INVAL;
    eap_peer *p = calloc(1, sizeof(*p));
    if (!p)
        return M2MVPN_E_NOMEM;
    p->password = secure_memdup(password, password_len);
    if (!p->password) {
        free(p);
        return M2MVPN_E_NOMEM;
    }
    p->password_len = password_len;
    p->method = method;
    p->state = EAP_PEER_START;
    memcpy(p->identity, identity, il + 1);
    if (method == EAP_METHOD_MSCHAPV2) {
        if (eap_mschapv2_nt_hash(password, password_len, p->nt_hash) < 0) {
            eap_peer_free(p);
            return M2MVPN_E_INVAL; /* not UTF-8 */
        }
        /* MSCHAPv2 needs only the NT hash from now on. */
        secure_free(p->password, p->password_len);
        p->password = NULL;
        p->password_len = 0;
    }
    *ret = p;
    return 0;
}

void eap_peer_free(eap_peer *p)
{
    if (!p)
        return;
    secure_free(p->password, p->password_len);
    secure_wipe(p, sizeof(*p));
    free(p);
}

eap_peer_state eap_peer_get_state(const eap_peer *p)
{
    return p->state;
}

bool eap_peer_refused(const eap_peer *p)
{
    return p->refused;
}

void eap_peer_msk(const eap_peer *p, const uint8_t **msk, size_t *len)
{
    *msk = p->msk;
    *len = p->state == EAP_PEER_DONE ? p->msk_len : 0;
}

/* ------------------------------------------------------------ MSCHAPv2 math */

/* UTF-8 to UTF-16LE; false for invalid UTF-8 or too long. */
static bool utf8_to_utf16le(const char *s, size_t len, uint8_t *out, size_t cap, size_t *out_len)
{
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        uint8_t c = (uint8_t)s[i];
        uint32_t cp;
        size_t n;
        if (c < 0x80) {
            cp = c;
            n = 1;
        } else if ((c & 0xe0) == 0xc0) {
            cp = c & 0x1f;
            n = 2;
        } else if ((c & 0xf0) == 0xe0) {
            cp = c & 0x0f;
            n = 3;
        } else if ((c & 0xf8) == 0xf0) {
            cp = c & 0x07;
            n = 4;
        } else {
            return false;
        }
        if (i + n > len)
            return false;
        for (size_t k = 1; k < n; k++) {
            uint8_t cc = (uint8_t)s[i + k];
            if ((cc & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (cc & 0x3f);
        }
        static const uint32_t min_cp[5] = { 0, 0, 0x80, 0x800, 0x10000 };
        if (cp < min_cp[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += n;
        if (cp >= 0x10000) {
            if (o + 4 > cap)
                return false;
            uint32_t v = cp - 0x10000;
            uint16_t hi = (uint16_t)(0xd800 | (v >> 10)), lo = (uint16_t)(0xdc00 | (v & 0x3ff));
            out[o++] = (uint8_t)hi;
            out[o++] = (uint8_t)(hi >> 8);
            out[o++] = (uint8_t)lo;
            out[o++] = (uint8_t)(lo >> 8);
        } else {
            if (o + 2 > cap)
                return false;
            out[o++] = (uint8_t)cp;
            out[o++] = (uint8_t)(cp >> 8);
        }
    }
    *out_len = o;
    return true;
}

int eap_mschapv2_nt_hash(const char *password, size_t len, uint8_t out[16])
{
    uint8_t uni[1024];
    size_t ulen = 0;
    if (!password || !utf8_to_utf16le(password, len, uni, sizeof(uni), &ulen)) {
        secure_wipe(uni, sizeof(uni));
        return M2MVPN_E_INVAL;
    }
    int r = crypto_md4(uni, ulen, out);
    secure_wipe(uni, sizeof(uni));
    return r;
}

/* RFC 2759 §8.2: the user name without a "DOMAIN\" prefix. */
static const char *bare_user(const char *user)
{
    const char *bs = strrchr(user, '\\');
    return bs ? bs + 1 : user;
}

int eap_mschapv2_challenge_hash(const uint8_t peer[16], const uint8_t auth[16], const char *user, uint8_t out[8])
{
    const char *u = bare_user(user);
    crypto_span parts[3] = { { peer, 16 }, { auth, 16 }, { (const uint8_t *)u, strlen(u) } };
    uint8_t d[20];
    int r = crypto_sha1(parts, 3, d);
    if (r == 0)
        memcpy(out, d, 8);
    secure_wipe(d, sizeof(d));
    return r;
}

int eap_mschapv2_nt_response(const uint8_t auth[16], const uint8_t peer[16], const char *user,
                             const uint8_t nt_hash[16], uint8_t out[24])
{
    uint8_t ch[8], z[21];
    int r = eap_mschapv2_challenge_hash(peer, auth, user, ch);
    memset(z, 0, sizeof(z));
    memcpy(z, nt_hash, 16);
    for (int i = 0; r == 0 && i < 3; i++)
        r = crypto_des7_block(z + 7 * i, ch, out + 8 * i);
    secure_wipe(z, sizeof(z));
    return r;
}

static int hash_hash(const uint8_t nt_hash[16], uint8_t out[16])
{
    return crypto_md4(nt_hash, 16, out);
}

int eap_mschapv2_authenticator_response(const uint8_t nt_hash[16], const uint8_t nt_resp[24],
                                        const uint8_t peer[16], const uint8_t auth[16], const char *user,
                                        char out[43])
{
    static const char magic1[] = "Magic server to client signing constant";
    static const char magic2[] = "Pad to make it do more than one iteration";
    uint8_t hh[16], d[20], ch[8];
    int r = hash_hash(nt_hash, hh);
    if (r == 0) {
        crypto_span p1[3] = { { hh, 16 }, { nt_resp, 24 }, { (const uint8_t *)magic1, sizeof(magic1) - 1 } };
        r = crypto_sha1(p1, 3, d);
    }
    if (r == 0)
        r = eap_mschapv2_challenge_hash(peer, auth, user, ch);
    if (r == 0) {
        crypto_span p2[3] = { { d, 20 }, { ch, 8 }, { (const uint8_t *)magic2, sizeof(magic2) - 1 } };
        r = crypto_sha1(p2, 3, d);
    }
    if (r == 0) {
        static const char hex[] = "0123456789ABCDEF";
        out[0] = 'S';
        out[1] = '=';
        for (int i = 0; i < 20; i++) {
            out[2 + 2 * i] = hex[d[i] >> 4];
            out[3 + 2 * i] = hex[d[i] & 15];
        }
        out[42] = '\0';
    }
    secure_wipe(hh, sizeof(hh));
    secure_wipe(d, sizeof(d));
    return r;
}

int eap_mschapv2_master_key(const uint8_t nt_hash[16], const uint8_t nt_resp[24], uint8_t out[16])
{
    static const char magic1[] = "This is the MPPE Master Key";
    uint8_t hh[16], d[20];
    int r = hash_hash(nt_hash, hh);
    if (r == 0) {
        crypto_span p[3] = { { hh, 16 }, { nt_resp, 24 }, { (const uint8_t *)magic1, sizeof(magic1) - 1 } };
        r = crypto_sha1(p, 3, d);
    }
    if (r == 0)
        memcpy(out, d, 16);
    secure_wipe(hh, sizeof(hh));
    secure_wipe(d, sizeof(d));
    return r;
}

/* RFC 3079 §3.4 GetAsymmetricStartKey, 16 bytes. */
static int start_key(const uint8_t master[16], const char *magic, uint8_t out[16])
{
    uint8_t pad1[40], pad2[40], d[20];
    memset(pad1, 0, sizeof(pad1));
    memset(pad2, 0xf2, sizeof(pad2));
    crypto_span p[4] = { { master, 16 }, { pad1, 40 }, { (const uint8_t *)magic, strlen(magic) }, { pad2, 40 } };
    int r = crypto_sha1(p, 4, d);
    if (r == 0)
        memcpy(out, d, 16);
    secure_wipe(d, sizeof(d));
    return r;
}

int eap_mschapv2_msk(const uint8_t nt_hash[16], const uint8_t nt_resp[24], uint8_t out[32])
{
    static const char magic2[] = "On the client side, this is the send key; "
                                 "on the server side, it is the receive key.";
    static const char magic3[] = "On the client side, this is the receive key; "
                                 "on the server side, it is the send key.";
    uint8_t master[16];
    int r = eap_mschapv2_master_key(nt_hash, nt_resp, master);
    if (r == 0)
        r = start_key(master, magic2, out);
    if (r == 0)
        r = start_key(master, magic3, out + 16);
    secure_wipe(master, sizeof(master));
    return r;
}

int eap_md5_value(uint8_t identifier, const char *password, size_t password_len, const uint8_t *challenge,
                  size_t challenge_len, uint8_t out[16])
{
    crypto_span p[3] = { { &identifier, 1 }, { (const uint8_t *)password, password_len }, { challenge, challenge_len } };
    return crypto_md5(p, 3, out);
}

/* ------------------------------------------------------------ the machine */

static int fail(eap_peer *p, int e, char *err, size_t err_len, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static int fail(eap_peer *p, int e, char *err, size_t err_len, const char *fmt, ...)
{
    p->state = EAP_PEER_FAILED;
    if (err && err_len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, err_len, fmt, ap);
        va_end(ap);
    }
    return e;
}

/* Response header; the length is patched by finish(). */
static void begin(buf_writer *w, uint8_t ident, uint8_t type)
{
    buf_put_u8(w, EAP_CODE_RESPONSE);
    buf_put_u8(w, ident);
    buf_put_u16(w, 0);
    buf_put_u8(w, type);
}

static int finish(buf_writer *w, size_t *out_len)
{
    if (!buf_writer_ok(w))
        return M2MVPN_E_INVAL;
    buf_patch_u16(w, 2, (uint16_t)buf_writer_len(w));
    *out_len = buf_writer_len(w);
    return EAP_STEP_SEND;
}

static int on_identity(eap_peer *p, uint8_t ident, buf_writer *w, size_t *out_len)
{
    begin(w, ident, EAP_TYPE_IDENTITY);
    buf_put_bytes(w, p->identity, strlen(p->identity));
    p->state = EAP_PEER_IDENTITY_SENT;
    return finish(w, out_len);
}

static int on_md5(eap_peer *p, uint8_t ident, buf_reader data, buf_writer *w, size_t *out_len, char *err,
                  size_t err_len)
{
    buf_reader value;
    if (!buf_get_u8_length_prefixed(&data, &value) || value.len == 0)
        return fail(p, M2MVPN_E_PROTOCOL, err, err_len, "malformed EAP-MD5 challenge");
    uint8_t v[16];
    int r = eap_md5_value(ident, p->password, p->password_len, value.p, value.len, v);
    if (r < 0)
        return fail(p, r, err, err_len, "EAP-MD5 computation failed");
    begin(w, ident, EAP_TYPE_MD5);
    buf_put_u8(w, 16);
    buf_put_bytes(w, v, 16);
    secure_wipe(v, sizeof(v));
    p->state = EAP_PEER_METHOD;
    return finish(w, out_len);
}

static int on_mschap_challenge(eap_peer *p, uint8_t ident, uint8_t ms_id, buf_reader data, buf_writer *w,
                               size_t *out_len, char *err, size_t err_len)
{
    uint8_t vsize;
    if (!buf_get_u8(&data, &vsize) || vsize != 16 || !buf_get_bytes(&data, p->auth_challenge, 16))
        return fail(p, M2MVPN_E_PROTOCOL, err, err_len, "malformed MSCHAPv2 challenge");
    int r = crypto_random(p->peer_challenge, 16);
    if (r == 0)
        r = eap_mschapv2_nt_response(p->auth_challenge, p->peer_challenge, p->identity, p->nt_hash, p->nt_response);
    if (r < 0)
        return fail(p, r, err, err_len, "MSCHAPv2 computation failed");
    p->ms_id = ms_id;
    size_t name_len = strlen(p->identity);
    begin(w, ident, EAP_TYPE_MSCHAPV2);
    buf_put_u8(w, MSCHAP_OP_RESPONSE);
    buf_put_u8(w, ms_id);
    buf_put_u16(w, (uint16_t)(4 + 1 + 49 + name_len)); /* MS-Length: from the OpCode on */
    buf_put_u8(w, 49);
    buf_put_bytes(w, p->peer_challenge, 16);
    buf_put_zeros(w, 8);
    buf_put_bytes(w, p->nt_response, 24);
    buf_put_u8(w, 0); /* flags */
    buf_put_bytes(w, p->identity, name_len);
    p->state = EAP_PEER_METHOD;
    return finish(w, out_len);
}

static int hexval(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

static int on_mschap_success(eap_peer *p, uint8_t ident, uint8_t ms_id, buf_reader msg, buf_writer *w,
                             size_t *out_len, char *err, size_t err_len)
{
    if (ms_id != p->ms_id)
        return fail(p, M2MVPN_E_PROTOCOL, err, err_len,
                    "MSCHAPv2 Success for another exchange (MS-CHAPv2-ID %u)", ms_id);
    /* "S=<40 hex digits>", then the end or " M=<message>" (RFC 2759 §5). */
    uint8_t got[20], want[20];
    bool ok = msg.len >= 42 && msg.p[0] == 'S' && msg.p[1] == '=' && (msg.len == 42 || msg.p[42] == ' ');
    for (int i = 0; ok && i < 20; i++) {
        int hi = hexval(msg.p[2 + 2 * i]), lo = hexval(msg.p[3 + 2 * i]);
        ok = hi >= 0 && lo >= 0;
        got[i] = (uint8_t)(ok ? hi << 4 | lo : 0);
    }
    if (!ok)
        return fail(p, M2MVPN_E_AUTH_PEER, err, err_len,
                    "gateway's MSCHAPv2 Success carries no authenticator response");
    char expect[43];
    int r = eap_mschapv2_authenticator_response(p->nt_hash, p->nt_response, p->peer_challenge,
                                                p->auth_challenge, p->identity, expect);
    for (int i = 0; r == 0 && i < 20; i++)
        want[i] = (uint8_t)(hexval((uint8_t)expect[2 + 2 * i]) << 4 | hexval((uint8_t)expect[3 + 2 * i]));
    bool match = r == 0 && crypto_memeq(got, want, 20);
    secure_wipe(expect, sizeof(expect));
    secure_wipe(want, sizeof(want));
    if (!match)
        return fail(p, M2MVPN_E_AUTH_PEER, err, err_len,
                    "gateway's MSCHAPv2 authenticator response is wrong: it does not know the "
                    "password of '%s'", p->identity);
    if ((r = eap_mschapv2_msk(p->nt_hash, p->nt_response, p->msk)) < 0)
        return fail(p, r, err, err_len, "MSCHAPv2 key derivation failed");
    p->msk_len = 32;
    begin(w, ident, EAP_TYPE_MSCHAPV2);
    buf_put_u8(w, MSCHAP_OP_SUCCESS);
    p->state = EAP_PEER_SUCCESS_ACKED;
    return finish(w, out_len);
}

/* "E=691 R=0 C=... V=3 M=..." (RFC 2759 §6): name the error code. */
static int on_mschap_failure(eap_peer *p, buf_reader msg, char *err, size_t err_len)
{
    unsigned code = 0;
    if (msg.len > 2 && msg.p[0] == 'E' && msg.p[1] == '=')
        for (size_t i = 2; i < msg.len && i < 12 && msg.p[i] >= '0' && msg.p[i] <= '9'; i++)
            code = code * 10 + (unsigned)(msg.p[i] - '0');
    const char *what = code == 691 ? "wrong user name or password"
                       : code == 648 ? "password expired"
                       : code == 647 ? "account disabled"
                       : code == 646 ? "restricted logon hours"
                       : code == 649 ? "no dial-in permission"
                       : "refused";
    p->refused = true;
    return fail(p, M2MVPN_E_AUTH_LOCAL, err, err_len,
                "gateway refused the EAP-MSCHAPv2 credentials of '%s' (E=%u: %s)", p->identity, code, what);
}

static int on_mschap(eap_peer *p, uint8_t ident, buf_reader data, buf_writer *w, size_t *out_len, char *err,
                     size_t err_len)
{
    uint8_t op, ms_id;
    uint16_t ms_len;
    if (!buf_get_u8(&data, &op) || !buf_get_u8(&data, &ms_id) || !buf_get_u16(&data, &ms_len) ||
        ms_len != data.len + 4)
        return fail(p, M2MVPN_E_PROTOCOL, err, err_len, "malformed MSCHAPv2 packet");
    if (op == MSCHAP_OP_CHALLENGE && (p->state == EAP_PEER_START || p->state == EAP_PEER_IDENTITY_SENT))
        return on_mschap_challenge(p, ident, ms_id, data, w, out_len, err, err_len);
    if (op == MSCHAP_OP_SUCCESS && p->state == EAP_PEER_METHOD)
        return on_mschap_success(p, ident, ms_id, data, w, out_len, err, err_len);
    if (op == MSCHAP_OP_FAILURE && p->state == EAP_PEER_METHOD)
        return on_mschap_failure(p, data, err, err_len);
    return fail(p, M2MVPN_E_PROTOCOL, err, err_len, "unexpected MSCHAPv2 %s %u in this state",
                op == MSCHAP_OP_CHALLENGE ? "Challenge" : op == MSCHAP_OP_SUCCESS ? "Success"
                : op == MSCHAP_OP_FAILURE ? "Failure" : "OpCode", op);
}

int eap_peer_process(eap_peer *p, const uint8_t *pkt, size_t len, uint8_t *out, size_t cap, size_t *out_len,
                     char *err, size_t err_len)
{
    if (err && err_len)
        err[0] = '\0';
    if (!p || (!pkt && len) || !out || !out_len)
        return M2MVPN_E_INVAL;
    if (p->state == EAP_PEER_FAILED || p->state == EAP_PEER_DONE)
        return fail(p, M2MVPN_E_PROTOCOL, err, err_len, "EAP message after the exchange ended");
    buf_reader r = buf_reader_make(pkt, len);
    uint8_t code, ident, type = 0;
    uint16_t plen;
    if (!buf_get_u8(&r, &code) || !buf_get_u8(&r, &ident) || !buf_get_u16(&r, &plen) || plen != len)
        return fail(p, M2MVPN_E_PROTOCOL, err, err_len, "malformed EAP packet (%zu bytes)", len);
    buf_writer w;
    buf_writer_init(&w, out, cap);
    eap_peer_state st = p->state;
    switch (code) {
    case EAP_CODE_SUCCESS:
        if (len != 4)
            return fail(p, M2MVPN_E_PROTOCOL, err, err_len, "malformed EAP-Success (%zu bytes)", len);
        /* Only once the method has finished: MSCHAPv2 after the verified
         * authenticator response, MD5 after our response. */
        if ((p->method == EAP_METHOD_MSCHAPV2 && st == EAP_PEER_SUCCESS_ACKED) ||
            (p->method == EAP_METHOD_MD5 && st == EAP_PEER_METHOD)) {
            p->state = EAP_PEER_DONE;
            return EAP_STEP_DONE;
        }
        return fail(p, M2MVPN_E_AUTH_LOCAL, err, err_len,
                    "premature EAP-Success from the gateway (EAP state %s, method not finished): refused",
                    eap_peer_state_name(st));
    case EAP_CODE_FAILURE:
        if (len != 4)
            return fail(p, M2MVPN_E_PROTOCOL, err, err_len, "malformed EAP-Failure (%zu bytes)", len);
        p->refused = true;
        return fail(p, M2MVPN_E_AUTH_LOCAL, err, err_len,
                    "gateway sent EAP-Failure: it refused the credentials of '%s'", p->identity);
    case EAP_CODE_REQUEST:
        if (!buf_get_u8(&r, &type))
            return fail(p, M2MVPN_E_PROTOCOL, err, err_len, "EAP Request without a type");
        break;
    default:
        return fail(p, M2MVPN_E_PROTOCOL, err, err_len, "unexpected EAP code %u from the gateway", code);
    }
    if (type == EAP_TYPE_IDENTITY && (st == EAP_PEER_START || st == EAP_PEER_IDENTITY_SENT))
        return on_identity(p, ident, &w, out_len);
    if (type == EAP_TYPE_NOTIFICATION) {
        /* RFC 3748 §5.2: acknowledged with an empty Notification, in any
         * state; it changes nothing (its text is the gateway's, not shown). */
        begin(&w, ident, EAP_TYPE_NOTIFICATION);
        return finish(&w, out_len);
    }
    if (type == method_type(p->method)) {
        if (p->method == EAP_METHOD_MSCHAPV2)
            return on_mschap(p, ident, r, &w, out_len, err, err_len);
        if (st == EAP_PEER_START || st == EAP_PEER_IDENTITY_SENT)
            return on_md5(p, ident, r, &w, out_len, err, err_len);
    }
    if (type != method_type(p->method) && type != EAP_TYPE_IDENTITY)
        return fail(p, M2MVPN_E_AUTH_LOCAL, err, err_len,
                    "gateway asked for EAP method %s (type %u), the profile allows only %s: refused",
                    eap_type_name(type), type, eap_type_name(method_type(p->method)));
    return fail(p, M2MVPN_E_PROTOCOL, err, err_len, "unexpected EAP %s request in EAP state %s",
                eap_type_name(type), eap_peer_state_name(st));
}
