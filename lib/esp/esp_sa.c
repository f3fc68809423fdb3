/* SPDX-License-Identifier: Apache-2.0 */
/*
 * One CHILD SA's ESP crypto. Each direction has its own EVP context, keyed
 * once in esp_sa_new; per packet only the IV/nonce is set, so encapsulation
 * (one thread) and decapsulation (another thread) never share state except
 * the atomic counters and rekey flags.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include <m2mvpn/m2mvpn.h>

#include "../core/buf.h"
#include "../core/loop.h"
#include "../core/secmem.h"
#include "../core/iana.h"
#include "esp.h"

#define ESP_HDR_LEN 8      /* SPI + sequence number */
#define AEAD_SALT_LEN 4
#define AEAD_IV_LEN 8
#define AEAD_ICV_LEN 16
#define CBC_BLOCK 16
#define HMAC_MAX_OUT 64

typedef struct esp_dir {
    EVP_CIPHER_CTX *cipher;
    EVP_MAC_CTX *mac;          /* CBC only */
    uint8_t salt[AEAD_SALT_LEN];
} esp_dir;

struct esp_sa {
    uint32_t spi_in, spi_out;
    bool aead, esn;
    size_t iv_len, icv_len, block;     /* block: padding alignment */
    esp_dir in, out;
    EVP_CIPHER_CTX *iv_gen;            /* CBC: AES-ECB of the seq under a random key */
    esp_replay_window replay;          /* inbound thread only */
    _Atomic uint64_t next_seq;         /* next outbound sequence number */
    uint64_t seq_max, seq_soft;
    esp_lifetime lifetime;
    uint64_t created_ms;
    _Atomic uint32_t rekey_raised, rekey_pending;
    atomic_bool out_dead, in_dead;     /* hard limits reached */
    _Atomic uint64_t packets_in, bytes_in, packets_out, bytes_out;
    _Atomic uint64_t dropped[ESP_DROP__COUNT];
};

static const char *const drop_names[] = {
#define ESP_XX_NAME(name, text) #name,
    ESP_DROP_MAP(ESP_XX_NAME)
#undef ESP_XX_NAME
};
static const char *const rekey_names[] = {
#define ESP_XX_NAME(name, text) #name,
    ESP_REKEY_MAP(ESP_XX_NAME)
#undef ESP_XX_NAME
};

const char *esp_drop_reason_name(esp_drop_reason r)
{
    return (unsigned)r < ESP_DROP__COUNT ? drop_names[r] : "?";
}

const char *esp_rekey_reason_name(esp_rekey_reason r)
{
    return (unsigned)r < ESP_REKEY__COUNT ? rekey_names[r] : "?";
}

bool esp_rekey_reason_is_hard(esp_rekey_reason r)
{
    return r == ESP_REKEY_HARD_SEQ || r == ESP_REKEY_HARD_BYTES || r == ESP_REKEY_HARD_TIME ||
           r == ESP_REKEY_HARD_PACKETS;
}

static void set_err(char *err, size_t err_len, const char *msg)
{
    if (err && err_len)
        snprintf(err, err_len, "%s", msg);
}

/* ------------------------------------------------------ algorithm table */

static size_t integ_key_len(uint16_t integ_id)
{
    switch (integ_id) {
    case AUTH_HMAC_SHA2_256_128: return 32;
    case AUTH_HMAC_SHA2_384_192: return 48;
    case AUTH_HMAC_SHA2_512_256: return 64;
    default: return 0;
    }
}

static const char *integ_digest(uint16_t integ_id)
{
    switch (integ_id) {
    case AUTH_HMAC_SHA2_256_128: return "SHA2-256";
    case AUTH_HMAC_SHA2_384_192: return "SHA2-384";
    case AUTH_HMAC_SHA2_512_256: return "SHA2-512";
    default: return NULL;
    }
}

static const char *cipher_name(uint16_t encr_id, uint16_t key_bits)
{
    switch (encr_id) {
    case ENCR_AES_GCM_16:
        return key_bits == 128 ? "AES-128-GCM" : key_bits == 256 ? "AES-256-GCM" : NULL;
    case ENCR_CHACHA20_POLY1305:
        return key_bits == 256 ? "ChaCha20-Poly1305" : NULL;
    case ENCR_AES_CBC:
        return key_bits == 128 ? "AES-128-CBC" : key_bits == 256 ? "AES-256-CBC" : NULL;
    default:
        return NULL;
    }
}

static bool combination_ok(uint16_t encr_id, uint16_t key_bits, uint16_t integ_id)
{
    if (!cipher_name(encr_id, key_bits))
        return false;
    if (encr_id == ENCR_AES_CBC)
        return integ_key_len(integ_id) != 0;
    return integ_id == 0;
}

size_t esp_keymat_len(uint16_t encr_id, uint16_t key_bits, uint16_t integ_id)
{
    if (!combination_ok(encr_id, key_bits, integ_id))
        return 0;
    size_t encr = key_bits / 8u + (encr_id == ENCR_AES_CBC ? 0 : AEAD_SALT_LEN);
    return encr + integ_key_len(integ_id);
}

int esp_keys_from_keymat(esp_sa_config *cfg, const uint8_t *keymat, size_t len,
                         bool we_are_initiator)
{
    if (!cfg || !keymat)
        return M2MVPN_E_INVAL;
    size_t per_dir = esp_keymat_len(cfg->encr_id, cfg->encr_key_bits, cfg->integ_id);
    if (per_dir == 0 || len < 2 * per_dir)
        return M2MVPN_E_INVAL;
    size_t integ = integ_key_len(cfg->integ_id);
    size_t encr = per_dir - integ;
    /* RFC 7296 §2.17: encr i->r, integ i->r, encr r->i, integ r->i. */
    esp_sa_keys *i2r = we_are_initiator ? &cfg->key_out : &cfg->key_in;
    esp_sa_keys *r2i = we_are_initiator ? &cfg->key_in : &cfg->key_out;
    memcpy(i2r->encr, keymat, encr);
    i2r->encr_len = encr;
    memcpy(i2r->integ, keymat + encr, integ);
    i2r->integ_len = integ;
    memcpy(r2i->encr, keymat + per_dir, encr);
    r2i->encr_len = encr;
    memcpy(r2i->integ, keymat + per_dir + encr, integ);
    r2i->integ_len = integ;
    return 0;
}

size_t esp_overhead(uint16_t encr_id, uint16_t integ_id)
{
    switch (encr_id) {
    case ENCR_AES_GCM_16:
    case ENCR_CHACHA20_POLY1305:
        /* header, IV, up to 3 pad bytes, pad length + next header, ICV */
        return ESP_HDR_LEN + AEAD_IV_LEN + 3 + 2 + AEAD_ICV_LEN;
    case ENCR_AES_CBC:
        if (!integ_key_len(integ_id))
            return 0;
        return ESP_HDR_LEN + CBC_BLOCK + (CBC_BLOCK - 1) + 2 + integ_key_len(integ_id) / 2;
    default:
        return 0;
    }
}

size_t esp_sa_overhead(const esp_sa *sa)
{
    return ESP_HDR_LEN + sa->iv_len + (sa->block - 1) + 2 + sa->icv_len;
}

uint32_t esp_default_mtu(uint16_t encr_id, uint16_t integ_id, uint32_t underlay_mtu,
                         bool ipv6_underlay)
{
    size_t ip_udp = (ipv6_underlay ? 40 : 20) + 8;
    size_t block = encr_id == ENCR_AES_CBC ? CBC_BLOCK : 4;
    size_t fixed = ESP_HDR_LEN + (encr_id == ENCR_AES_CBC ? CBC_BLOCK : AEAD_IV_LEN) +
                   (encr_id == ENCR_AES_CBC ? integ_key_len(integ_id) / 2 : AEAD_ICV_LEN);
    if (esp_overhead(encr_id, integ_id) == 0 || underlay_mtu < ip_udp + fixed + 2 * block)
        return 0;
    /* Largest p with roundup(p + 2, block) <= room. */
    size_t room = underlay_mtu - ip_udp - fixed;
    room -= room % block;
    return (uint32_t)(room - 2);
}

/* ---------------------------------------------------------- SA setup */

static int dir_init(esp_dir *d, const esp_sa_config *cfg, const esp_sa_keys *k, bool enc,
                    EVP_CIPHER *cipher, EVP_MAC *mac, char *err, size_t err_len)
{
    size_t key_len = cfg->encr_key_bits / 8u;
    bool aead = cfg->encr_id != ENCR_AES_CBC;

    if (k->encr_len != key_len + (aead ? AEAD_SALT_LEN : 0) ||
        k->integ_len != integ_key_len(cfg->integ_id)) {
        set_err(err, err_len, "key length does not match the algorithm");
        return M2MVPN_E_INVAL;
    }
    d->cipher = EVP_CIPHER_CTX_new();
    if (!d->cipher)
        return M2MVPN_E_NOMEM;
    int ok = enc ? EVP_EncryptInit_ex2(d->cipher, cipher, k->encr, NULL, NULL)
                 : EVP_DecryptInit_ex2(d->cipher, cipher, k->encr, NULL, NULL);
    if (!ok) {
        set_err(err, err_len, "cipher setup failed");
        return M2MVPN_E_CRYPTO;
    }
    if (aead) {
        memcpy(d->salt, k->encr + key_len, AEAD_SALT_LEN);
    } else {
        EVP_CIPHER_CTX_set_padding(d->cipher, 0);
        d->mac = EVP_MAC_CTX_new(mac);
        if (!d->mac)
            return M2MVPN_E_NOMEM;
        OSSL_PARAM params[] = {
            OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST,
                                             (char *)integ_digest(cfg->integ_id), 0),
            OSSL_PARAM_construct_end(),
        };
        if (!EVP_MAC_init(d->mac, k->integ, k->integ_len, params)) {
            set_err(err, err_len, "HMAC setup failed");
            return M2MVPN_E_CRYPTO;
        }
    }
    return 0;
}

static void dir_free(esp_dir *d)
{
    EVP_CIPHER_CTX_free(d->cipher);
    EVP_MAC_CTX_free(d->mac);
    secure_wipe(d->salt, sizeof(d->salt));
}

static uint64_t now_ms(void)
{
    return core_monotonic_ms();
}

int esp_sa_new(const esp_sa_config *cfg, esp_sa **ret, char *err, size_t err_len)
{
    if (!cfg || !ret) {
        set_err(err, err_len, "missing argument");
        return M2MVPN_E_INVAL;
    }
    if (!combination_ok(cfg->encr_id, cfg->encr_key_bits, cfg->integ_id)) {
        set_err(err, err_len, "unsupported ESP algorithm combination");
        return M2MVPN_E_NOTSUPP;
    }
    if (cfg->replay_window > ESP_REPLAY_MAX) {
        set_err(err, err_len, "replay window too large");
        return M2MVPN_E_INVAL;
    }
    esp_sa *sa = calloc(1, sizeof(*sa));
    if (!sa)
        return M2MVPN_E_NOMEM;
    sa->spi_in = cfg->spi_in;
    sa->spi_out = cfg->spi_out;
    sa->esn = cfg->esn;
    sa->aead = cfg->encr_id != ENCR_AES_CBC;
    sa->iv_len = sa->aead ? AEAD_IV_LEN : CBC_BLOCK;
    sa->icv_len = sa->aead ? AEAD_ICV_LEN : integ_key_len(cfg->integ_id) / 2;
    sa->block = sa->aead ? 4 : CBC_BLOCK;
    sa->seq_max = cfg->esn ? UINT64_MAX : UINT32_MAX;
    /* Ask for a rekey with 1/16 of the space left (2^28 packets without ESN). */
    sa->seq_soft = sa->seq_max - (cfg->esn ? ((uint64_t)1 << 32) : (sa->seq_max >> 4));
    atomic_init(&sa->next_seq, 1);
    sa->lifetime = cfg->lifetime;
    sa->created_ms = now_ms();

    int rc = esp_replay_init(&sa->replay, cfg->replay_window, cfg->esn);
    if (rc < 0) {
        free(sa);
        return rc;
    }
    EVP_CIPHER *cipher = EVP_CIPHER_fetch(NULL, cipher_name(cfg->encr_id, cfg->encr_key_bits), NULL);
    EVP_MAC *mac = sa->aead ? NULL : EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (!cipher || (!sa->aead && !mac)) {
        set_err(err, err_len, "OpenSSL lacks the algorithm");
        rc = M2MVPN_E_CRYPTO;
        goto out;
    }
    rc = dir_init(&sa->out, cfg, &cfg->key_out, true, cipher, mac, err, err_len);
    if (rc == 0)
        rc = dir_init(&sa->in, cfg, &cfg->key_in, false, cipher, mac, err, err_len);
    if (rc == 0 && !sa->aead) {
        /* RFC 4303 §3.3.2 / RFC 3602: CBC IVs must be unpredictable. Encrypting
         * the sequence number under a fresh random key gives that at the cost
         * of one block operation instead of a call into the DRBG per packet. */
        uint8_t ivkey[16];
        EVP_CIPHER *ecb = EVP_CIPHER_fetch(NULL, "AES-128-ECB", NULL);
        sa->iv_gen = EVP_CIPHER_CTX_new();
        if (!ecb || !sa->iv_gen || RAND_bytes(ivkey, sizeof(ivkey)) != 1 ||
            !EVP_EncryptInit_ex2(sa->iv_gen, ecb, ivkey, NULL, NULL)) {
            set_err(err, err_len, "IV generator setup failed");
            rc = M2MVPN_E_CRYPTO;
        } else {
            EVP_CIPHER_CTX_set_padding(sa->iv_gen, 0);
        }
        secure_wipe(ivkey, sizeof(ivkey));
        EVP_CIPHER_free(ecb);
    }
out:
    EVP_CIPHER_free(cipher);
    EVP_MAC_free(mac);
    if (rc < 0) {
        esp_sa_free(sa);
        return rc;
    }
    *ret = sa;
    return 0;
}

void esp_sa_free(esp_sa *sa)
{
    if (!sa)
        return;
    dir_free(&sa->in);
    dir_free(&sa->out);
    EVP_CIPHER_CTX_free(sa->iv_gen);
    esp_replay_destroy(&sa->replay);
    secure_wipe(sa, sizeof(*sa));
    free(sa);
}

uint32_t esp_sa_spi_in(const esp_sa *sa) { return sa->spi_in; }
size_t esp_sa_header_len(const esp_sa *sa) { return ESP_HDR_LEN + sa->iv_len; }

bool esp_sa_rekey_pending(esp_sa *sa)
{
    return atomic_load_explicit(&sa->rekey_pending, memory_order_relaxed) != 0;
}
uint32_t esp_sa_spi_out(const esp_sa *sa) { return sa->spi_out; }

void esp_sa_set_next_seq(esp_sa *sa, uint64_t next_seq)
{
    atomic_store(&sa->next_seq, next_seq);
}

/* --------------------------------------------------------- rekey, counters */

static void raise_rekey(esp_sa *sa, esp_rekey_reason r)
{
    uint32_t bit = 1u << r;
    if (!(atomic_fetch_or(&sa->rekey_raised, bit) & bit))
        atomic_fetch_or(&sa->rekey_pending, bit);
}

uint32_t esp_sa_take_rekey_requests(esp_sa *sa, uint64_t now)
{
    uint64_t age_s = (now - sa->created_ms) / 1000u;
    if (sa->lifetime.soft_seconds && age_s >= sa->lifetime.soft_seconds)
        raise_rekey(sa, ESP_REKEY_SOFT_TIME);
    if (sa->lifetime.hard_seconds && age_s >= sa->lifetime.hard_seconds) {
        atomic_store(&sa->out_dead, true);
        atomic_store(&sa->in_dead, true);
        raise_rekey(sa, ESP_REKEY_HARD_TIME);
    }
    return atomic_exchange(&sa->rekey_pending, 0);
}

static void count_drop(esp_sa *sa, esp_drop_reason r, esp_drop_reason *out)
{
    atomic_fetch_add_explicit(&sa->dropped[r], 1, memory_order_relaxed);
    if (out)
        *out = r;
}

/* Byte and packet lifetimes, checked per direction after each packet (the
 * totals of that direction, this packet included): two compares, no lock;
 * a limit raises its request once (raise_rekey), the datapath delivers it. */
static void account_bytes(esp_sa *sa, uint64_t total, uint64_t packets)
{
    const esp_lifetime *lt = &sa->lifetime;
    if (lt->soft_packets && packets >= lt->soft_packets)
        raise_rekey(sa, ESP_REKEY_SOFT_PACKETS);
    if (lt->hard_packets && packets >= lt->hard_packets) {
        atomic_store(&sa->out_dead, true);
        atomic_store(&sa->in_dead, true);
        raise_rekey(sa, ESP_REKEY_HARD_PACKETS);
    }
    if (lt->soft_bytes && total >= lt->soft_bytes)
        raise_rekey(sa, ESP_REKEY_SOFT_BYTES);
    if (lt->hard_bytes && total >= lt->hard_bytes) {
        atomic_store(&sa->out_dead, true);
        atomic_store(&sa->in_dead, true);
        raise_rekey(sa, ESP_REKEY_HARD_BYTES);
    }
}

void esp_sa_get_counters(const esp_sa *sa, esp_sa_counters *out)
{
    esp_sa *s = (esp_sa *)sa; /* atomics are read only */
    out->packets_in = atomic_load_explicit(&s->packets_in, memory_order_relaxed);
    out->bytes_in = atomic_load_explicit(&s->bytes_in, memory_order_relaxed);
    out->packets_out = atomic_load_explicit(&s->packets_out, memory_order_relaxed);
    out->bytes_out = atomic_load_explicit(&s->bytes_out, memory_order_relaxed);
    for (int i = 0; i < ESP_DROP__COUNT; i++)
        out->dropped[i] = atomic_load_explicit(&s->dropped[i], memory_order_relaxed);
}

/* ------------------------------------------------------------- packets */

/* AAD = SPI | [seq high] | seq low (RFC 4106 §5, RFC 7634 §2.1). */
static size_t build_aad(uint8_t aad[12], uint32_t spi, uint64_t seq, bool esn)
{
    buf_store_be32(aad, spi);
    if (esn) {
        buf_store_be32(aad + 4, (uint32_t)(seq >> 32));
        buf_store_be32(aad + 8, (uint32_t)seq);
        return 12;
    }
    buf_store_be32(aad + 4, (uint32_t)seq);
    return 8;
}

/* HMAC over the wire bytes, with the ESN high bits appended (RFC 4303 §2.2.1). */
static bool hmac_icv(esp_dir *d, const uint8_t *data, size_t len, uint64_t seq, bool esn,
                     uint8_t out[HMAC_MAX_OUT])
{
    uint8_t hi[4];
    size_t out_len;
    if (!EVP_MAC_init(d->mac, NULL, 0, NULL) || !EVP_MAC_update(d->mac, data, len))
        return false;
    if (esn) {
        buf_store_be32(hi, (uint32_t)(seq >> 32));
        if (!EVP_MAC_update(d->mac, hi, 4))
            return false;
    }
    return EVP_MAC_final(d->mac, out, &out_len, HMAC_MAX_OUT) == 1;
}

int esp_sa_encap(esp_sa *sa, const uint8_t *inner, size_t inner_len, uint8_t next_header,
                 uint8_t *out, size_t out_cap, size_t *out_len, esp_drop_reason *drop)
{
    if (atomic_load_explicit(&sa->out_dead, memory_order_relaxed)) {
        count_drop(sa, ESP_DROP_LIFETIME, drop);
        return M2MVPN_E_STATE;
    }
    size_t padded = inner_len + 2;
    padded += (sa->block - padded % sa->block) % sa->block;
    size_t total = ESP_HDR_LEN + sa->iv_len + padded + sa->icv_len;
    if (total > out_cap) {
        count_drop(sa, ESP_DROP_TOO_BIG, drop);
        return M2MVPN_E_INVAL;
    }
    uint64_t seq = atomic_fetch_add_explicit(&sa->next_seq, 1, memory_order_relaxed);
    if (seq == 0 || seq > sa->seq_max) {
        /* Never let a number repeat: the SA is done for sending. */
        atomic_store(&sa->out_dead, true);
        raise_rekey(sa, ESP_REKEY_HARD_SEQ);
        count_drop(sa, ESP_DROP_SEQ_EXHAUSTED, drop);
        return M2MVPN_E_STATE;
    }
    if (seq >= sa->seq_soft)
        raise_rekey(sa, ESP_REKEY_SOFT_SEQ);
    if (seq == sa->seq_max)
        raise_rekey(sa, ESP_REKEY_HARD_SEQ);

    uint8_t trailer[CBC_BLOCK + 2];
    size_t pad_len = padded - inner_len - 2;
    for (size_t i = 0; i < pad_len; i++)
        trailer[i] = (uint8_t)(i + 1); /* RFC 4303 §2.4: 1, 2, 3, ... */
    trailer[pad_len] = (uint8_t)pad_len;
    trailer[pad_len + 1] = next_header;

    buf_store_be32(out, sa->spi_out);
    buf_store_be32(out + 4, (uint32_t)seq);
    uint8_t *iv = out + ESP_HDR_LEN;
    uint8_t *ct = iv + sa->iv_len;
    EVP_CIPHER_CTX *c = sa->out.cipher;
    int n1 = 0, n2 = 0, n3 = 0;
    bool ok;

    if (sa->aead) {
        uint8_t nonce[12], aad[12];
        /* The 64-bit sequence number is a unique IV (RFC 4106 §3.1). */
        buf_store_be32(iv, (uint32_t)(seq >> 32));
        buf_store_be32(iv + 4, (uint32_t)seq);
        memcpy(nonce, sa->out.salt, AEAD_SALT_LEN);
        memcpy(nonce + AEAD_SALT_LEN, iv, AEAD_IV_LEN);
        size_t aad_len = build_aad(aad, sa->spi_out, seq, sa->esn);
        int dummy;
        ok = EVP_EncryptInit_ex(c, NULL, NULL, NULL, nonce) &&
             EVP_EncryptUpdate(c, NULL, &dummy, aad, (int)aad_len) &&
             EVP_EncryptUpdate(c, ct, &n1, inner, (int)inner_len) &&
             EVP_EncryptUpdate(c, ct + n1, &n2, trailer, (int)(pad_len + 2)) &&
             EVP_EncryptFinal_ex(c, ct + n1 + n2, &n3) &&
             EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_GET_TAG, AEAD_ICV_LEN, ct + padded);
    } else {
        uint8_t ctr[CBC_BLOCK] = {0};
        uint8_t mac[HMAC_MAX_OUT];
        int ivn = 0;
        buf_store_be32(ctr + 8, (uint32_t)(seq >> 32));
        buf_store_be32(ctr + 12, (uint32_t)seq);
        ok = EVP_EncryptUpdate(sa->iv_gen, iv, &ivn, ctr, CBC_BLOCK) &&
             EVP_EncryptInit_ex(c, NULL, NULL, NULL, iv) &&
             EVP_EncryptUpdate(c, ct, &n1, inner, (int)inner_len) &&
             EVP_EncryptUpdate(c, ct + n1, &n2, trailer, (int)(pad_len + 2)) &&
             EVP_EncryptFinal_ex(c, ct + n1 + n2, &n3) &&
             hmac_icv(&sa->out, out, ESP_HDR_LEN + sa->iv_len + padded, seq, sa->esn, mac);
        if (ok)
            memcpy(ct + padded, mac, sa->icv_len);
    }
    if (!ok || (size_t)(n1 + n2 + n3) != padded) {
        count_drop(sa, ESP_DROP_MALFORMED, drop);
        return M2MVPN_E_CRYPTO;
    }
    *out_len = total;
    uint64_t packets = atomic_fetch_add_explicit(&sa->packets_out, 1, memory_order_relaxed);
    uint64_t bytes = atomic_fetch_add_explicit(&sa->bytes_out, inner_len, memory_order_relaxed);
    account_bytes(sa, bytes + inner_len, packets + 1);
    return 0;
}

/* Constant-time compare for the HMAC ICV. */
static bool icv_equal(const uint8_t *a, const uint8_t *b, size_t n)
{
    uint8_t diff = 0;
    for (size_t i = 0; i < n; i++)
        diff |= a[i] ^ b[i];
    return diff == 0;
}

int esp_sa_decap(esp_sa *sa, uint8_t *pkt, size_t len, uint8_t **inner, size_t *inner_len,
                 uint8_t *next_header, esp_drop_reason *drop)
{
    if (atomic_load_explicit(&sa->in_dead, memory_order_relaxed)) {
        count_drop(sa, ESP_DROP_LIFETIME, drop);
        return M2MVPN_E_STATE;
    }
    size_t min = ESP_HDR_LEN + sa->iv_len + sa->icv_len;
    if (len < min + sa->block || len > INT32_MAX ||
        (len - min) % sa->block != 0 || buf_load_be32(pkt) != sa->spi_in) {
        count_drop(sa, ESP_DROP_MALFORMED, drop);
        return M2MVPN_E_PROTOCOL;
    }
    uint64_t seq;
    if (!esp_replay_check(&sa->replay, buf_load_be32(pkt + 4), &seq)) {
        count_drop(sa, ESP_DROP_REPLAY, drop);
        return M2MVPN_E_PROTOCOL;
    }
    uint8_t *iv = pkt + ESP_HDR_LEN;
    uint8_t *ct = iv + sa->iv_len;
    size_t ct_len = len - min;
    uint8_t *icv = ct + ct_len;
    EVP_CIPHER_CTX *c = sa->in.cipher;
    int n1 = 0, n2 = 0;
    bool ok;

    if (sa->aead) {
        uint8_t nonce[12], aad[12];
        memcpy(nonce, sa->in.salt, AEAD_SALT_LEN);
        memcpy(nonce + AEAD_SALT_LEN, iv, AEAD_IV_LEN);
        size_t aad_len = build_aad(aad, sa->spi_in, seq, sa->esn);
        int dummy;
        ok = EVP_DecryptInit_ex(c, NULL, NULL, NULL, nonce) &&
             EVP_DecryptUpdate(c, NULL, &dummy, aad, (int)aad_len) &&
             EVP_DecryptUpdate(c, ct, &n1, ct, (int)ct_len) &&
             EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_SET_TAG, AEAD_ICV_LEN, icv) &&
             EVP_DecryptFinal_ex(c, ct + n1, &n2) > 0;
    } else {
        uint8_t mac[HMAC_MAX_OUT];
        ok = hmac_icv(&sa->in, pkt, len - sa->icv_len, seq, sa->esn, mac) &&
             icv_equal(mac, icv, sa->icv_len);
        if (ok)
            ok = EVP_DecryptInit_ex(c, NULL, NULL, NULL, iv) &&
                 EVP_DecryptUpdate(c, ct, &n1, ct, (int)ct_len) &&
                 EVP_DecryptFinal_ex(c, ct + n1, &n2);
    }
    if (!ok || (size_t)(n1 + n2) != ct_len) {
        count_drop(sa, ESP_DROP_INTEGRITY, drop);
        return M2MVPN_E_CRYPTO;
    }
    /* Authentic from here on; validate the trailer before advancing. */
    uint8_t nh = ct[ct_len - 1];
    uint8_t pad_len = ct[ct_len - 2];
    if ((size_t)pad_len + 2 > ct_len) {
        count_drop(sa, ESP_DROP_MALFORMED, drop);
        return M2MVPN_E_PROTOCOL;
    }
    size_t payload_len = ct_len - 2 - pad_len;
    for (size_t i = 0; i < pad_len; i++) {
        if (ct[payload_len + i] != (uint8_t)(i + 1)) {
            count_drop(sa, ESP_DROP_MALFORMED, drop);
            return M2MVPN_E_PROTOCOL;
        }
    }
    if (!esp_replay_advance(&sa->replay, seq)) {
        count_drop(sa, ESP_DROP_REPLAY, drop);
        return M2MVPN_E_PROTOCOL;
    }
    if (nh == ESP_NH_DUMMY) {
        count_drop(sa, ESP_DROP_DUMMY, drop);
        return M2MVPN_E_PROTOCOL;
    }
    /* The inner header must match what the trailer says it is. */
    if ((nh != ESP_NH_IPV4 && nh != ESP_NH_IPV6) || payload_len == 0 ||
        (ct[0] >> 4) != (nh == ESP_NH_IPV4 ? 4 : 6)) {
        count_drop(sa, ESP_DROP_MALFORMED, drop);
        return M2MVPN_E_PROTOCOL;
    }
    *inner = ct;
    *inner_len = payload_len;
    *next_header = nh;
    uint64_t packets = atomic_fetch_add_explicit(&sa->packets_in, 1, memory_order_relaxed);
    uint64_t bytes = atomic_fetch_add_explicit(&sa->bytes_in, payload_len, memory_order_relaxed);
    account_bytes(sa, bytes + payload_len, packets + 1);
    return 0;
}
