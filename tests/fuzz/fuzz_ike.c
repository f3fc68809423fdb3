/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer target for the IKEv2 codec (lib/ike/codec.h).
 *
 * The first input byte picks a path:
 *   0: one datagram: port-4500 classification, header + chain, every typed
 *      parser on every payload, SK decryption and the inner chain;
 *   1: a bare payload chain (first type = second byte), typed parsers;
 *   2: a run of u16-length-prefixed messages fed to fragment reassembly;
 *   3: typed parser of type `second byte` on the rest (deep structure fast).
 * Bit 0x80 of the first byte picks the CBC-shaped toy cipher instead of the
 * AEAD-shaped one.
 *
 * The cipher is a fixed-key XOR that accepts every ICV, so the fuzzer gets
 * past "decryption" into padding and inner-chain parsing. The integrator
 * can swap in real AES-GCM through the same ike_sk_cipher interface.
 *
 * Parsed SA choices, TS lists and CP payloads are built again and parsed
 * back; a mismatch aborts (a codec asymmetry is a bug too).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "crypto/crypto.h"
#include "ike/codec.h"

#define FUZZ_MAX_MSGS 8

static int toy_seal(void *ctx, const ike_sk_seal_io *io)
{
    (void)ctx;
    for (size_t i = 0; i < io->text_len; i++)
        io->text[i] ^= 0x5a;
    return 0;
}

static int toy_open(void *ctx, const ike_sk_open_io *io)
{
    (void)ctx;
    for (size_t i = 0; i < io->ct_len; i++)
        io->out[i] = io->ct[i] ^ 0x5a;
    return 0;
}

static ike_sk_cipher toy_cipher(int cbc)
{
    ike_sk_cipher c = { cbc ? 16 : 8, 16, cbc ? 16 : 1, toy_seal, toy_open, NULL };
    return c;
}

/* The real decryption path: AES-256-GCM-16 with a fixed key, as the engine
 * uses lib/crypto (bit 0x40 of the first byte). Forged ICVs fail here, so
 * this mainly exercises the real open path's bounds and the failure cleanup. */
static int real_open(void *ctx, const ike_sk_open_io *io)
{
    crypto_cipher *c = ctx;
    uint8_t icv[16];
    memcpy(icv, io->icv, sizeof(icv));
    crypto_msg m = { .aad = io->aad, .aad_len = io->aad_len, .iv = io->iv, .in = io->ct,
                     .out = io->out, .data_len = io->ct_len, .icv = icv };
    return crypto_cipher_decrypt(c, &m);
}

static ike_sk_cipher real_cipher(void)
{
    static crypto_cipher *gcm;
    if (!gcm) {
        static const uint8_t key[36] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17,
                                         18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32,
                                         0xca, 0xfe, 0xba, 0xbe };
        if (crypto_cipher_new(ENCR_AES_GCM_16, 256, 0, CRYPTO_DIR_DECRYPT, key, sizeof(key), NULL, 0,
                              &gcm) < 0)
            abort();
    }
    ike_sk_cipher c = { 8, 16, 1, NULL, real_open, gcm };
    return c;
}

static void check_sa_choice(const ike_sa_choice *c)
{
    static uint8_t buf[4096];
    buf_writer w;
    ike_chain_writer cw;
    buf_writer_init(&w, buf, sizeof(buf));
    ike_chain_writer_init(&cw, &w, SIZE_MAX);
    ike_build_sa_choice(&cw, c);
    ike_chain_writer_finish(&cw);
    if (!ike_chain_writer_ok(&cw))
        abort();
    ike_sa_choice back;
    buf_reader body = buf_reader_make(buf + IKE_GENERIC_HEADER_LEN,
                                      buf_writer_len(&w) - IKE_GENERIC_HEADER_LEN);
    if (ike_sa_parse_choice(body, &back, NULL) != 0 || back.present != c->present ||
        memcmp(back.id, c->id, sizeof(back.id)) != 0 || back.spi_len != c->spi_len)
        abort();
}

static void check_ts(const ike_ts_list *l)
{
    static uint8_t buf[4096];
    if (l->n == 0)
        return;
    buf_writer w;
    ike_chain_writer cw;
    buf_writer_init(&w, buf, sizeof(buf));
    ike_chain_writer_init(&cw, &w, SIZE_MAX);
    ike_build_ts(&cw, IKE_PL_TSI, l->ts, l->n);
    ike_chain_writer_finish(&cw);
    if (!ike_chain_writer_ok(&cw))
        abort();
    ike_ts_list back;
    buf_reader body = buf_reader_make(buf + IKE_GENERIC_HEADER_LEN,
                                      buf_writer_len(&w) - IKE_GENERIC_HEADER_LEN);
    if (ike_ts_parse(body, &back, NULL) != 0 || back.n != l->n)
        abort();
    for (size_t i = 0; i < l->n; i++) {
        uint8_t a[16];
        unsigned plen;
        if (memcmp(&back.ts[i], &l->ts[i], sizeof(ike_ts)) != 0)
            abort();
        (void)ike_ts_to_prefix(&l->ts[i], a, &plen);
    }
}

static void check_cp(const ike_cp *cp)
{
    static uint8_t buf[70000];
    buf_writer w;
    ike_chain_writer cw;
    buf_writer_init(&w, buf, sizeof(buf));
    ike_chain_writer_init(&cw, &w, SIZE_MAX);
    ike_build_cp(&cw, cp->cfg_type, cp->attr, cp->n);
    ike_chain_writer_finish(&cw);
    if (!ike_chain_writer_ok(&cw))
        return;     /* may exceed 65535 only if the input did; it cannot */
    ike_cp back;
    buf_reader body = buf_reader_make(buf + IKE_GENERIC_HEADER_LEN,
                                      buf_writer_len(&w) - IKE_GENERIC_HEADER_LEN);
    if (ike_cp_parse(body, &back, NULL) != 0 || back.n != cp->n)
        abort();
}

static void parse_typed(uint8_t type, buf_reader body, const ike_sk_cipher *c)
{
    ike_diag d;
    switch (type) {
    case IKE_PL_SA: {
        static ike_sa_view sa;
        ike_sa_choice ch;
        (void)ike_sa_parse(body, &sa, &d);
        if (ike_sa_parse_choice(body, &ch, &d) == 0)
            check_sa_choice(&ch);
        break;
    }
    case IKE_PL_KE: { ike_ke v; (void)ike_ke_parse(body, &v, &d); break; }
    case IKE_PL_NONCE: { buf_reader v; (void)ike_nonce_parse(body, &v, &d); break; }
    case IKE_PL_NOTIFY: { ike_notify v; (void)ike_notify_parse(body, &v, &d); break; }
    case IKE_PL_DELETE: { ike_delete v; (void)ike_delete_parse(body, &v, &d); break; }
    case IKE_PL_VENDOR: { buf_reader v; (void)ike_vendor_parse(body, &v, &d); break; }
    case IKE_PL_IDI:
    case IKE_PL_IDR: { ike_id v; (void)ike_id_parse(body, &v, &d); break; }
    case IKE_PL_CERT: { ike_cert v; (void)ike_cert_parse(body, &v, &d); break; }
    case IKE_PL_CERTREQ: { ike_certreq v; (void)ike_certreq_parse(body, &v, &d); break; }
    case IKE_PL_AUTH: { ike_auth v; (void)ike_auth_parse(body, &v, &d); break; }
    case IKE_PL_EAP: { ike_eap v; (void)ike_eap_parse(body, &v, &d); break; }
    case IKE_PL_TSI:
    case IKE_PL_TSR: {
        static ike_ts_list l;
        if (ike_ts_parse(body, &l, &d) == 0)
            check_ts(&l);
        break;
    }
    case IKE_PL_CP: {
        static ike_cp cp;
        if (ike_cp_parse(body, &cp, &d) == 0)
            check_cp(&cp);
        break;
    }
    case IKE_PL_SK: {
        ike_sk_parts parts;
        (void)ike_sk_split(body, c->iv_len, c->icv_len, c->block_len, &parts, &d);
        break;
    }
    case IKE_PL_SKF: {
        ike_skf skf;
        (void)ike_skf_parse(body, c->iv_len, c->icv_len, c->block_len, &skf, &d);
        break;
    }
    default:
        break;
    }
}

static void parse_chain_payloads(const ike_chain *ch, const ike_sk_cipher *c)
{
    for (size_t i = 0; i < ch->n; i++)
        parse_typed(ch->pl[i].type, ch->pl[i].body, c);
}

static void fuzz_datagram(const uint8_t *data, size_t size, const ike_sk_cipher *c)
{
    static ike_message m;
    static ike_chain inner;
    static uint8_t plain[65536];
    buf_reader r = buf_reader_make(data, size);
    ike_diag d;

    buf_reader probe = r;
    if (ike_udp_classify(&probe) == IKE_UDP_IKE && ike_message_parse(probe, &m, &d) == 0)
        parse_chain_payloads(&m.chain, c);
    if (ike_message_parse(r, &m, &d) != 0)
        return;
    parse_chain_payloads(&m.chain, c);
    if (ike_sk_open(&m, c, plain, sizeof(plain), &inner, &d) == 0)
        parse_chain_payloads(&inner, c);
}

static void fuzz_fragments(const uint8_t *data, size_t size, const ike_sk_cipher *c)
{
    static ike_message m;
    static ike_chain inner;
    ike_frag_reasm r;
    ike_diag d;
    buf_reader in = buf_reader_make(data, size);

    ike_frag_reasm_init(&r);
    for (int i = 0; i < FUZZ_MAX_MSGS; i++) {
        buf_reader msg;
        if (!buf_get_u16_length_prefixed(&in, &msg))
            break;
        if (ike_message_parse(msg, &m, &d) != 0)
            continue;
        if (ike_frag_add(&r, &m, c, &inner, &d) == 1) {
            parse_chain_payloads(&inner, c);
            ike_frag_reasm_reset(&r);
        }
    }
    ike_frag_reasm_reset(&r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static ike_chain ch;
    if (size < 2)
        return 0;
    ike_sk_cipher c = (data[0] & 0x40) ? real_cipher() : toy_cipher(data[0] & 0x80);
    switch (data[0] & 0x03) {
    case 0:
        fuzz_datagram(data + 1, size - 1, &c);
        break;
    case 1:
        if (ike_chain_parse(buf_reader_make(data + 2, size - 2), data[1], 0, &ch, NULL) == 0) {
            parse_chain_payloads(&ch, &c);
            ike_mobike_info m; /* the MOBIKE notifies of the same chain */
            ike_diag d;
            (void)ike_mobike_scan(&ch, &m, &d);
        }
        break;
    case 2:
        fuzz_fragments(data + 1, size - 1, &c);
        break;
    default:
        parse_typed(data[1], buf_reader_make(data + 2, size - 2), &c);
        break;
    }
    return 0;
}
