/* SPDX-License-Identifier: Apache-2.0 */
/*
 * IKEv2 codec tests: name tables, header rules, every payload built and
 * parsed back, a full IKE_SA_INIT request, truncation at every length,
 * overlong lengths, unknown (critical) payloads, the SK layout through a toy
 * cipher behind the callback interface, fragmentation and reassembly, and a
 * real IKE_SA_INIT request captured from strongSwan 5.9.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <m2mvpn/m2mvpn.h>

#include "core/buf.h"
#include "ike/codec.h"
#include "profile/proposal.h"

/* ---------------------------------------------------------------- helpers */

#define MSG_CAP 16384

static const uint8_t nonce32[32] = {
    0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f,
    0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x2b, 0x2c, 0x2d, 0x2e, 0x2f,
};

static ike_header test_header(uint8_t exchange, uint32_t msgid)
{
    ike_header h;
    memset(&h, 0, sizeof(h));
    h.spi_i = 0x0102030405060708ULL;
    h.spi_r = 0;
    h.exchange = exchange;
    h.flags = IKE_FLAG_INITIATOR;
    h.message_id = msgid;
    return h;
}

/* Start a message: header at 0, chain writer patching header byte 16. */
static void msg_begin(buf_writer *w, uint8_t *buf, ike_chain_writer *cw, uint8_t exchange)
{
    buf_writer_init(w, buf, MSG_CAP);
    ike_header h = test_header(exchange, 0);
    ike_message_begin(w, &h, cw);
}

static size_t msg_end(buf_writer *w, ike_chain_writer *cw)
{
    ck_assert_int_eq(ike_message_end(cw), 0);
    ck_assert(buf_writer_ok(w));
    ck_assert_uint_eq(buf_load_be32(w->p + IKE_HDR_LENGTH_AT), buf_writer_len(w));
    return buf_writer_len(w);
}

/* Parse `len` bytes as a message and return its only payload of `type`. */
static ike_payload only_payload(const uint8_t *buf, size_t len, uint8_t type, ike_message *m)
{
    ike_diag d;
    int rc = ike_message_parse(buf_reader_make(buf, len), m, &d);
    ck_assert_msg(rc == 0, "parse failed: %s", d.text);
    ck_assert_uint_eq(m->chain.n, 1);
    ck_assert_uint_eq(m->chain.pl[0].type, type);
    return m->chain.pl[0];
}

static void assert_view_eq(buf_reader v, const void *p, size_t len)
{
    ck_assert_uint_eq(v.len, len);
    if (len)
        ck_assert_mem_eq(v.p, p, len);
}

static proposal ike_proposal_gcm(void)
{
    proposal p;
    memset(&p, 0, sizeof(p));
    p.encr[0] = (proposal_encr){ ENCR_AES_GCM_16, 256 };
    p.encr[1] = (proposal_encr){ ENCR_CHACHA20_POLY1305, 256 };
    p.n_encr = 2;
    p.prf[0] = PRF_HMAC_SHA2_384;
    p.n_prf = 1;
    p.ke[0] = KE_X25519;
    p.ke[1] = KE_ECP256;
    p.n_ke = 2;
    return p;
}

/* ------------------------------------------------------------ name tables */

START_TEST(test_names)
{
    ck_assert_str_eq(ike_exchange_name(34), "IKE_SA_INIT");
    ck_assert_str_eq(ike_exchange_name(37), "INFORMATIONAL");
    ck_assert_ptr_null(ike_exchange_name(33));
    ck_assert_str_eq(ike_payload_name(33), "SA");
    ck_assert_str_eq(ike_payload_name(48), "EAP");
    ck_assert_str_eq(ike_payload_name(53), "SKF");
    ck_assert_ptr_null(ike_payload_name(49));
    ck_assert_str_eq(ike_notify_name(16430), "IKEV2_FRAGMENTATION_SUPPORTED");
    ck_assert_str_eq(ike_notify_name(16431), "SIGNATURE_HASH_ALGORITHMS");
    ck_assert_str_eq(ike_notify_name(16388), "NAT_DETECTION_SOURCE_IP");
    ck_assert_str_eq(ike_notify_name(14), "NO_PROPOSAL_CHOSEN");
    ck_assert_str_eq(ike_notify_name(16417), "EAP_ONLY_AUTHENTICATION");
    ck_assert_ptr_null(ike_notify_name(2));
    ck_assert_str_eq(ike_auth_method_name(2), "SHARED_KEY_MIC");
    ck_assert_str_eq(ike_auth_method_name(14), "DIGITAL_SIGNATURE");
    ck_assert_str_eq(ike_id_type_name(2), "FQDN");
    ck_assert_str_eq(ike_cp_attr_name(8), "INTERNAL_IP6_ADDRESS");
    ck_assert_str_eq(ike_transform_type_name(4), "KE");
    ck_assert_str_eq(ike_protocol_name(3), "ESP");
    ck_assert_str_eq(ike_cert_encoding_name(4), "X509_SIGNATURE");
    ck_assert_str_eq(ike_ts_type_name(8), "IPV6_ADDR_RANGE");
    ck_assert_str_eq(ike_cfg_type_name(2), "REPLY");
    ck_assert_str_eq(ike_eap_code_name(3), "SUCCESS");
    ck_assert(ike_payload_type_known(46));
    ck_assert(!ike_payload_type_known(52));
}
END_TEST

/* ----------------------------------------------------------------- header */

START_TEST(test_header_round_trip)
{
    uint8_t buf[64];
    buf_writer w;
    buf_writer_init(&w, buf, sizeof(buf));
    ike_header h = test_header(IKE_EXCH_IKE_AUTH, 0x01020304);
    h.spi_r = 0xa1a2a3a4a5a6a7a8ULL;
    h.flags = IKE_FLAG_RESPONSE;
    ike_header_build(&w, &h);
    ike_message_finish(&w, 0);
    ck_assert(buf_writer_ok(&w));
    ck_assert_uint_eq(buf_writer_len(&w), 28);
    ck_assert_uint_eq(buf[17], 0x20);   /* version 2.0 */
    ck_assert_uint_eq(buf_load_be32(buf + 24), 28);

    ike_header p;
    buf_reader r = buf_reader_make(buf, 28);
    ck_assert_int_eq(ike_header_parse(&r, &p, NULL), 0);
    ck_assert_uint_eq(r.len, 28);   /* not advanced */
    ck_assert(p.spi_i == h.spi_i && p.spi_r == h.spi_r);
    ck_assert_uint_eq(p.exchange, IKE_EXCH_IKE_AUTH);
    ck_assert_uint_eq(p.flags, IKE_FLAG_RESPONSE);
    ck_assert_uint_eq(p.message_id, 0x01020304);
    ck_assert_uint_eq(p.major, 2);
    ck_assert_uint_eq(p.minor, 0);
    ck_assert_uint_eq(p.length, 28);
}
END_TEST

START_TEST(test_header_rules)
{
    uint8_t buf[40];
    buf_writer w;
    buf_writer_init(&w, buf, sizeof(buf));
    ike_header h = test_header(IKE_EXCH_IKE_SA_INIT, 0);
    ike_header_build(&w, &h);
    ike_message_finish(&w, 0);
    ike_header p;
    ike_diag d;
    buf_reader r = buf_reader_make(buf, 28);

    buf[17] = 0x25; /* 2.5: a higher minor version is accepted */
    ck_assert_int_eq(ike_header_parse(&r, &p, &d), 0);
    ck_assert_uint_eq(p.minor, 5);

    buf[17] = 0x30; /* 3.0 */
    ck_assert_int_eq(ike_header_parse(&r, &p, &d), M2MVPN_E_PROTOCOL);
    ck_assert_uint_eq(d.notify, IKE_N_INVALID_MAJOR_VERSION);

    buf[17] = 0x10; /* IKEv1 */
    ck_assert_int_eq(ike_header_parse(&r, &p, &d), M2MVPN_E_PROTOCOL);
    ck_assert_uint_eq(d.notify, IKE_N_INVALID_SYNTAX);
    buf[17] = 0x20;

    /* Declared length must equal the datagram: longer and shorter both fail. */
    r = buf_reader_make(buf, 27);
    ck_assert_int_eq(ike_header_parse(&r, &p, &d), M2MVPN_E_PROTOCOL);
    memset(buf + 28, 0, 4);
    r = buf_reader_make(buf, 32);
    ck_assert_int_eq(ike_header_parse(&r, &p, &d), M2MVPN_E_PROTOCOL);
    ck_assert_ptr_nonnull(strstr(d.text, "differs from datagram length 32"));
    buf_store_be32(buf + 24, 32);
    ck_assert_int_eq(ike_header_parse(&r, &p, &d), 0);

    /* Zero initiator SPI is never valid. */
    memset(buf, 0, 8);
    ck_assert_int_eq(ike_header_parse(&r, &p, &d), M2MVPN_E_PROTOCOL);
}
END_TEST

START_TEST(test_udp_classify)
{
    uint8_t ka[1] = { 0xff };
    uint8_t esp[8] = { 0, 0, 0x10, 0x01, 0, 0, 0, 1 };
    uint8_t ike[32] = { 0 };
    uint8_t shortbuf[3] = { 0 };
    buf_reader r = buf_reader_make(ka, 1);
    ck_assert_int_eq(ike_udp_classify(&r), IKE_UDP_KEEPALIVE);
    r = buf_reader_make(esp, sizeof(esp));
    ck_assert_int_eq(ike_udp_classify(&r), IKE_UDP_ESP);
    ck_assert_uint_eq(r.len, 8);
    r = buf_reader_make(ike, sizeof(ike));
    ck_assert_int_eq(ike_udp_classify(&r), IKE_UDP_IKE);
    ck_assert_uint_eq(r.len, 28);
    ck_assert_ptr_eq(r.p, ike + 4);
    r = buf_reader_make(shortbuf, sizeof(shortbuf));
    ck_assert_int_eq(ike_udp_classify(&r), IKE_UDP_INVALID);

    uint8_t out[8];
    buf_writer w;
    buf_writer_init(&w, out, sizeof(out));
    memset(out, 0xee, sizeof(out));
    ike_put_non_esp_marker(&w);
    ck_assert_uint_eq(buf_writer_len(&w), 4);
    ck_assert_uint_eq(buf_load_be32(out), 0);
}
END_TEST

/* ---------------------------------------------------------- SA payloads */

START_TEST(test_sa_offer_round_trip)
{
    static uint8_t buf[MSG_CAP];
    buf_writer w;
    ike_chain_writer cw;
    msg_begin(&w, buf, &cw, IKE_EXCH_IKE_SA_INIT);
    proposal props[2] = { ike_proposal_gcm(), ike_proposal_gcm() };
    props[1].n_encr = 1;
    props[1].encr[0] = (proposal_encr){ ENCR_AES_CBC, 128 };
    props[1].integ[0] = AUTH_HMAC_SHA2_256_128;
    props[1].n_integ = 1;
    props[1].prf[0] = PRF_HMAC_SHA2_256;
    props[1].n_ke = 1;
    props[1].ke[0] = KE_MODP2048;
    ike_build_sa(&cw, props, 2, IKE_PROTO_IKE, NULL, 0);
    size_t len = msg_end(&w, &cw);

    ike_message m;
    ike_payload pl = only_payload(buf, len, IKE_PL_SA, &m);
    ike_sa_view sa;
    ck_assert_int_eq(ike_sa_parse(pl.body, &sa, NULL), 0);
    ck_assert_uint_eq(sa.n_prop, 2);
    ck_assert_uint_eq(sa.prop[0].number, 1);
    ck_assert_uint_eq(sa.prop[1].number, 2);
    ck_assert_uint_eq(sa.prop[0].protocol, IKE_PROTO_IKE);
    ck_assert_uint_eq(sa.prop[0].spi_len, 0);
    /* gcm256, chacha20poly1305, prfsha384, x25519, ecp256 */
    ck_assert_uint_eq(sa.prop[0].n_transforms, 5);
    const ike_transform *t = &sa.tr[sa.prop[0].first_transform];
    ck_assert_uint_eq(t[0].type, IKE_TT_ENCR);
    ck_assert_uint_eq(t[0].id, ENCR_AES_GCM_16);
    ck_assert_uint_eq(t[0].key_bits, 256);
    ck_assert_uint_eq(t[1].id, ENCR_CHACHA20_POLY1305);
    ck_assert_uint_eq(t[1].key_bits, 0);    /* RFC 7634: no Key Length attribute */
    ck_assert_uint_eq(t[2].type, IKE_TT_PRF);
    ck_assert_uint_eq(t[2].id, PRF_HMAC_SHA2_384);
    ck_assert_uint_eq(t[3].type, IKE_TT_KE);
    ck_assert_uint_eq(t[3].id, KE_X25519);
    ck_assert_uint_eq(t[4].id, KE_ECP256);
    /* aes128, prfsha256, sha256, modp2048 */
    ck_assert_uint_eq(sa.prop[1].n_transforms, 4);
    t = &sa.tr[sa.prop[1].first_transform];
    ck_assert_uint_eq(t[0].id, ENCR_AES_CBC);
    ck_assert_uint_eq(t[0].key_bits, 128);
    ck_assert_uint_eq(t[1].type, IKE_TT_PRF);
    ck_assert_uint_eq(t[2].type, IKE_TT_INTEG);
    ck_assert_uint_eq(t[2].id, AUTH_HMAC_SHA2_256_128);
    ck_assert_uint_eq(t[3].id, KE_MODP2048);

    /* Several proposals are no valid answer from a responder. */
    ike_sa_choice c;
    ike_diag d;
    ck_assert_int_eq(ike_sa_parse_choice(pl.body, &c, &d), M2MVPN_E_PROTOCOL);
    ck_assert_ptr_nonnull(strstr(d.text, "exactly 1"));
}
END_TEST

START_TEST(test_sa_esp_and_choice)
{
    static uint8_t buf[MSG_CAP];
    buf_writer w;
    ike_chain_writer cw;
    msg_begin(&w, buf, &cw, IKE_EXCH_IKE_AUTH);
    proposal p;
    memset(&p, 0, sizeof(p));
    p.encr[0] = (proposal_encr){ ENCR_AES_GCM_16, 128 };
    p.n_encr = 1;
    const uint8_t spi[4] = { 0xc1, 0xc2, 0xc3, 0xc4 };
    ike_build_sa(&cw, &p, 1, IKE_PROTO_ESP, spi, 4);
    size_t len = msg_end(&w, &cw);

    ike_message m;
    ike_payload pl = only_payload(buf, len, IKE_PL_SA, &m);
    ike_sa_choice c;
    ike_diag d;
    ck_assert_msg(ike_sa_parse_choice(pl.body, &c, &d) == 0, "%s", d.text);
    ck_assert_uint_eq(c.protocol, IKE_PROTO_ESP);
    ck_assert_uint_eq(c.spi_len, 4);
    ck_assert_mem_eq(c.spi, spi, 4);
    ck_assert(ike_sa_choice_has(&c, IKE_TT_ENCR));
    ck_assert(ike_sa_choice_has(&c, IKE_TT_ESN));   /* ESP always states ESN */
    ck_assert(!ike_sa_choice_has(&c, IKE_TT_PRF));
    ck_assert(!ike_sa_choice_has(&c, IKE_TT_INTEG));
    ck_assert(!ike_sa_choice_has(&c, IKE_TT_KE));
    ck_assert_uint_eq(c.id[IKE_TT_ESN], ESN_NO);
    ck_assert_uint_eq(c.id[IKE_TT_ENCR], ENCR_AES_GCM_16);
    ck_assert_uint_eq(c.encr_key_bits, 128);

    /* ike_build_sa_choice -> ike_sa_parse_choice gives the same choice. */
    ike_sa_choice c2 = c;
    c2.number = 3;
    c2.present |= 1u << IKE_TT_KE;
    c2.id[IKE_TT_KE] = KE_ECP384;
    msg_begin(&w, buf, &cw, IKE_EXCH_IKE_AUTH);
    ike_build_sa_choice(&cw, &c2);
    len = msg_end(&w, &cw);
    pl = only_payload(buf, len, IKE_PL_SA, &m);
    ike_sa_choice c3;
    ck_assert_int_eq(ike_sa_parse_choice(pl.body, &c3, &d), 0);
    ck_assert_uint_eq(c3.number, 3);
    ck_assert_uint_eq(c3.present, c2.present);
    ck_assert_mem_eq(c3.id, c2.id, sizeof(c3.id));
    ck_assert_uint_eq(c3.encr_key_bits, 128);

    /* A choice with two ENCR transforms is rejected. */
    proposal two;
    memset(&two, 0, sizeof(two));
    two.encr[0] = (proposal_encr){ ENCR_AES_GCM_16, 128 };
    two.encr[1] = (proposal_encr){ ENCR_AES_GCM_16, 256 };
    two.n_encr = 2;
    msg_begin(&w, buf, &cw, IKE_EXCH_IKE_AUTH);
    ike_build_sa(&cw, &two, 1, IKE_PROTO_ESP, spi, 4);
    len = msg_end(&w, &cw);
    pl = only_payload(buf, len, IKE_PL_SA, &m);
    ck_assert_int_eq(ike_sa_parse_choice(pl.body, &c3, &d), M2MVPN_E_PROTOCOL);
    ck_assert_ptr_nonnull(strstr(d.text, "more than one ENCR"));
}
END_TEST

START_TEST(test_sa_malformed)
{
    /* One proposal, one ENCR transform with Key Length 128, by hand. */
    uint8_t body[] = {
        0, 0, 0, 20,  1, IKE_PROTO_IKE, 0, 1,
        0, 0, 0, 12,  IKE_TT_ENCR, 0, 0, 20,  0x80, 14, 0, 128,
    };
    ike_sa_choice c;
    ike_diag d;
    ck_assert_int_eq(ike_sa_parse_choice(buf_reader_make(body, sizeof(body)), &c, &d), 0);
    ck_assert_uint_eq(c.encr_key_bits, 128);

    uint8_t bad[sizeof(body)];
    /* transform count says 2 but there is one */
    memcpy(bad, body, sizeof(body));
    bad[7] = 2;
    ck_assert_int_eq(ike_sa_parse_choice(buf_reader_make(bad, sizeof(bad)), &c, &d),
                     M2MVPN_E_PROTOCOL);
    /* proposal length beyond the payload */
    memcpy(bad, body, sizeof(body));
    bad[3] = 21;
    ck_assert_int_eq(ike_sa_parse_choice(buf_reader_make(bad, sizeof(bad)), &c, &d),
                     M2MVPN_E_PROTOCOL);
    /* transform length beyond the proposal */
    memcpy(bad, body, sizeof(body));
    bad[11] = 13;
    ck_assert_int_eq(ike_sa_parse_choice(buf_reader_make(bad, sizeof(bad)), &c, &d),
                     M2MVPN_E_PROTOCOL);
    /* unknown attribute type: the choice is rejected */
    memcpy(bad, body, sizeof(body));
    bad[17] = 15;
    ck_assert_int_eq(ike_sa_parse_choice(buf_reader_make(bad, sizeof(bad)), &c, &d),
                     M2MVPN_E_PROTOCOL);
    ck_assert_ptr_nonnull(strstr(d.text, "unknown attribute"));
    /* "more proposals follow" but none does */
    memcpy(bad, body, sizeof(body));
    bad[0] = 2;
    ck_assert_int_eq(ike_sa_parse_choice(buf_reader_make(bad, sizeof(bad)), &c, &d),
                     M2MVPN_E_PROTOCOL);
    /* SPI size 3 */
    memcpy(bad, body, sizeof(body));
    bad[6] = 3;
    ck_assert_int_eq(ike_sa_parse_choice(buf_reader_make(bad, sizeof(bad)), &c, &d),
                     M2MVPN_E_PROTOCOL);
    /* Every truncation fails. */
    for (size_t n = 0; n < sizeof(body); n++)
        ck_assert_int_eq(ike_sa_parse_choice(buf_reader_make(body, n), &c, &d),
                         M2MVPN_E_PROTOCOL);
}
END_TEST

/* ------------------------------------------------- simple typed payloads */

START_TEST(test_simple_payloads_round_trip)
{
    static uint8_t buf[MSG_CAP];
    buf_writer w;
    ike_chain_writer cw;
    const uint8_t ke_data[32] = { 1, 2, 3, 4, 5, 6, 7, 8, 9 };
    const uint8_t spi4[4] = { 0xde, 0xad, 0xbe, 0xef };
    const uint8_t spis[8] = { 0, 0, 0, 1, 0, 0, 0, 2 };
    const uint8_t natd[20] = { 0x55, 0x66 };
    const char vid[] = "m2mvpn";
    const char fqdn[] = "dev1.m2m.test";
    const uint8_t der[] = { 0x30, 0x82, 0x01, 0x00, 0xaa };
    const uint8_t hashes[40] = { 0xab, [20] = 0xcd };
    const uint8_t authdata[] = { 9, 8, 7, 6, 5, 4, 3, 2, 1 };
    const uint8_t eap_req[] = { IKE_EAP_REQUEST, 7, 0, 10, 1, 'h', 'e', 'l', 'l', 'o' };

    msg_begin(&w, buf, &cw, IKE_EXCH_IKE_AUTH);
    ike_build_ke(&cw, KE_X25519, ke_data, sizeof(ke_data));
    ike_build_nonce(&cw, nonce32, sizeof(nonce32));
    ike_build_notify(&cw, IKE_PROTO_ESP, IKE_N_REKEY_SA, spi4, 4, NULL, 0);
    ike_build_notify(&cw, IKE_PROTO_NONE, IKE_N_NAT_DETECTION_SOURCE_IP, NULL, 0, natd, 20);
    ike_build_delete(&cw, IKE_PROTO_ESP, 4, spis, 2);
    ike_build_delete(&cw, IKE_PROTO_IKE, 0, NULL, 0);
    ike_build_vendor(&cw, vid, strlen(vid));
    ike_build_id(&cw, IKE_PL_IDI, IKE_ID_FQDN, fqdn, strlen(fqdn));
    ike_build_cert(&cw, IKE_CERT_X509_SIGNATURE, der, sizeof(der));
    ike_build_certreq(&cw, IKE_CERT_X509_SIGNATURE, hashes, 2);
    ike_build_auth(&cw, IKE_AUTH_SHARED_KEY_MIC, authdata, sizeof(authdata));
    ike_build_eap(&cw, eap_req, sizeof(eap_req));
    size_t len = msg_end(&w, &cw);

    ike_message m;
    ike_diag d;
    ck_assert_msg(ike_message_parse(buf_reader_make(buf, len), &m, &d) == 0, "%s", d.text);
    ck_assert_uint_eq(m.chain.n, 12);
    ck_assert_uint_eq(m.hdr.next_payload, IKE_PL_KE);
    const ike_payload *pl = m.chain.pl;

    ike_ke ke;
    ck_assert_int_eq(ike_ke_parse(pl[0].body, &ke, &d), 0);
    ck_assert_uint_eq(ke.group, KE_X25519);
    assert_view_eq(ke.data, ke_data, sizeof(ke_data));

    buf_reader nonce;
    ck_assert_int_eq(ike_nonce_parse(pl[1].body, &nonce, &d), 0);
    assert_view_eq(nonce, nonce32, sizeof(nonce32));

    ike_notify n;
    ck_assert_int_eq(ike_notify_parse(pl[2].body, &n, &d), 0);
    ck_assert_uint_eq(n.type, IKE_N_REKEY_SA);
    ck_assert_uint_eq(n.protocol, IKE_PROTO_ESP);
    assert_view_eq(n.spi, spi4, 4);
    ck_assert_uint_eq(n.data.len, 0);
    ck_assert_int_eq(ike_chain_find_notify(&m.chain, IKE_N_NAT_DETECTION_SOURCE_IP, &n, &d), 0);
    assert_view_eq(n.data, natd, 20);
    ck_assert_uint_eq(n.spi.len, 0);
    ck_assert_int_eq(ike_chain_find_notify(&m.chain, IKE_N_COOKIE, &n, &d), 1);

    ike_delete del;
    ck_assert_int_eq(ike_delete_parse(pl[4].body, &del, &d), 0);
    ck_assert_uint_eq(del.protocol, IKE_PROTO_ESP);
    ck_assert_uint_eq(del.n_spi, 2);
    assert_view_eq(del.spis, spis, 8);
    ck_assert_int_eq(ike_delete_parse(pl[5].body, &del, &d), 0);
    ck_assert_uint_eq(del.protocol, IKE_PROTO_IKE);
    ck_assert_uint_eq(del.n_spi, 0);

    buf_reader v;
    ck_assert_int_eq(ike_vendor_parse(pl[6].body, &v, &d), 0);
    assert_view_eq(v, vid, strlen(vid));

    ike_id id;
    ck_assert_uint_eq(pl[7].type, IKE_PL_IDI);
    ck_assert_int_eq(ike_id_parse(pl[7].body, &id, &d), 0);
    ck_assert_uint_eq(id.type, IKE_ID_FQDN);
    assert_view_eq(id.data, fqdn, strlen(fqdn));

    ike_cert cert;
    ck_assert_int_eq(ike_cert_parse(pl[8].body, &cert, &d), 0);
    ck_assert_uint_eq(cert.encoding, IKE_CERT_X509_SIGNATURE);
    assert_view_eq(cert.data, der, sizeof(der));

    ike_certreq cr;
    ck_assert_int_eq(ike_certreq_parse(pl[9].body, &cr, &d), 0);
    ck_assert_uint_eq(cr.n_hashes, 2);
    assert_view_eq(cr.data, hashes, 40);

    ike_auth auth;
    ck_assert_int_eq(ike_auth_parse(pl[10].body, &auth, &d), 0);
    ck_assert_uint_eq(auth.method, IKE_AUTH_SHARED_KEY_MIC);
    assert_view_eq(auth.data, authdata, sizeof(authdata));

    ike_eap eap;
    ck_assert_int_eq(ike_eap_parse(pl[11].body, &eap, &d), 0);
    ck_assert_uint_eq(eap.code, IKE_EAP_REQUEST);
    ck_assert_uint_eq(eap.identifier, 7);
    ck_assert_uint_eq(eap.type, 1);
    assert_view_eq(eap.data, "hello", 5);
    ck_assert_ptr_eq(ike_chain_find(&m.chain, IKE_PL_DELETE, &pl[4]), &pl[5]);
    ck_assert_uint_eq(ike_chain_count(&m.chain, IKE_PL_NOTIFY), 2);
}
END_TEST

START_TEST(test_simple_payloads_invalid)
{
    ike_diag d;
    uint8_t b[300] = { 0 };
    buf_reader nonce;
    ike_ke ke;
    ike_notify n;
    ike_delete del;
    ike_id id;
    ike_certreq cr;
    ike_eap eap;
    ike_auth auth;

    ck_assert_int_eq(ike_nonce_parse(buf_reader_make(b, 15), &nonce, &d), M2MVPN_E_PROTOCOL);
    ck_assert_int_eq(ike_nonce_parse(buf_reader_make(b, 16), &nonce, &d), 0);
    ck_assert_int_eq(ike_nonce_parse(buf_reader_make(b, 256), &nonce, &d), 0);
    ck_assert_int_eq(ike_nonce_parse(buf_reader_make(b, 257), &nonce, &d), M2MVPN_E_PROTOCOL);
    ck_assert_int_eq(ike_ke_parse(buf_reader_make(b, 4), &ke, &d), M2MVPN_E_PROTOCOL);

    uint8_t ntf[] = { 3, 4, 0x40, 0x09, 1, 2, 3 };  /* SPI size 4, only 3 bytes */
    ck_assert_int_eq(ike_notify_parse(buf_reader_make(ntf, sizeof(ntf)), &n, &d),
                     M2MVPN_E_PROTOCOL);
    uint8_t del_bad[] = { 3, 4, 0, 2, 0, 0, 0, 1 };  /* says 2 SPIs, has 1 */
    ck_assert_int_eq(ike_delete_parse(buf_reader_make(del_bad, sizeof(del_bad)), &del, &d),
                     M2MVPN_E_PROTOCOL);
    uint8_t del_ike[] = { 1, 0, 0, 1 };             /* IKE delete with a count */
    ck_assert_int_eq(ike_delete_parse(buf_reader_make(del_ike, sizeof(del_ike)), &del, &d),
                     M2MVPN_E_PROTOCOL);
    uint8_t id_v4[] = { IKE_ID_IPV4_ADDR, 0, 0, 0, 198, 51, 100 };
    ck_assert_int_eq(ike_id_parse(buf_reader_make(id_v4, sizeof(id_v4)), &id, &d),
                     M2MVPN_E_PROTOCOL);
    uint8_t crq[22] = { IKE_CERT_X509_SIGNATURE };   /* 21 bytes of hash */
    ck_assert_int_eq(ike_certreq_parse(buf_reader_make(crq, 22), &cr, &d), M2MVPN_E_PROTOCOL);
    ck_assert_int_eq(ike_certreq_parse(buf_reader_make(crq, 1), &cr, &d), 0);  /* any CA */
    ck_assert_uint_eq(cr.n_hashes, 0);
    uint8_t eap_len[] = { IKE_EAP_RESPONSE, 1, 0, 9, 1, 'x' };  /* EAP length 9 != 6 */
    ck_assert_int_eq(ike_eap_parse(buf_reader_make(eap_len, sizeof(eap_len)), &eap, &d),
                     M2MVPN_E_PROTOCOL);
    uint8_t eap_ok[] = { IKE_EAP_SUCCESS, 1, 0, 4 };
    ck_assert_int_eq(ike_eap_parse(buf_reader_make(eap_ok, 4), &eap, &d), 0);
    ck_assert_uint_eq(eap.code, IKE_EAP_SUCCESS);
    ck_assert_uint_eq(eap.data.len, 0);
    uint8_t auth_empty[] = { 2, 0, 0, 0 };
    ck_assert_int_eq(ike_auth_parse(buf_reader_make(auth_empty, 4), &auth, &d),
                     M2MVPN_E_PROTOCOL);

    /* Builders refuse what the wire cannot carry. */
    uint8_t out[600];
    buf_writer w;
    ike_chain_writer cw;
    buf_writer_init(&w, out, sizeof(out));
    ike_chain_writer_init(&cw, &w, SIZE_MAX);
    ike_build_nonce(&cw, b, 257);
    ck_assert(!ike_chain_writer_ok(&cw));
    buf_writer_init(&w, out, sizeof(out));
    ike_chain_writer_init(&cw, &w, SIZE_MAX);
    ike_build_eap(&cw, eap_len, sizeof(eap_len));
    ck_assert(!ike_chain_writer_ok(&cw));
    /* A payload that does not fit the writer sets the sticky error. */
    buf_writer_init(&w, out, 100);
    ike_chain_writer_init(&cw, &w, SIZE_MAX);
    ike_build_cert(&cw, IKE_CERT_X509_SIGNATURE, b, 200);
    ck_assert(!ike_chain_writer_ok(&cw));
    /* ... and ike_message_end() reports it. */
    ike_header h = test_header(IKE_EXCH_IKE_SA_INIT, 0);
    buf_writer_init(&w, out, 100);
    ike_message_begin(&w, &h, &cw);
    ike_build_nonce(&cw, b, 32);
    ck_assert_int_eq(ike_message_end(&cw), 0);
    buf_writer_init(&w, out, 100);
    ike_message_begin(&w, &h, &cw);
    ike_build_nonce(&cw, b, 80);
    ck_assert_int_eq(ike_message_end(&cw), M2MVPN_E_INVAL);
}
END_TEST

/* ------------------------------------------------------------ TS and CP */

START_TEST(test_ts_round_trip)
{
    static uint8_t buf[MSG_CAP];
    buf_writer w;
    ike_chain_writer cw;
    ike_ts ts[3];
    const uint8_t net10[4] = { 10, 1, 2, 3 };
    const uint8_t any4[4] = { 0 };
    const uint8_t v6[16] = { 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0x42, 0xff };
    ck_assert_int_eq(ike_ts_from_prefix(net10, 4, 8, 0, 0, 65535, &ts[0]), 0);
    ck_assert_int_eq(ike_ts_from_prefix(any4, 4, 0, 17, 500, 500, &ts[1]), 0);
    ck_assert_int_eq(ike_ts_from_prefix(v6, 16, 64, 6, 0, 65535, &ts[2]), 0);
    ck_assert_uint_eq(ts[0].addr_start[0], 10);
    ck_assert_uint_eq(ts[0].addr_start[1], 0);
    ck_assert_uint_eq(ts[0].addr_end[3], 255);
    ck_assert_uint_eq(ts[2].addr_start[8], 0);
    ck_assert_uint_eq(ts[2].addr_end[15], 0xff);

    msg_begin(&w, buf, &cw, IKE_EXCH_IKE_AUTH);
    ike_build_ts(&cw, IKE_PL_TSR, ts, 3);
    size_t len = msg_end(&w, &cw);
    ck_assert_uint_eq(len, 28 + 4 + 4 + 16 + 16 + 40);
    ike_message m;
    ike_payload pl = only_payload(buf, len, IKE_PL_TSR, &m);
    ike_ts_list l;
    ike_diag d;
    ck_assert_int_eq(ike_ts_parse(pl.body, &l, &d), 0);
    ck_assert_uint_eq(l.n, 3);
    for (size_t i = 0; i < 3; i++) {
        ck_assert_uint_eq(l.ts[i].type, ts[i].type);
        ck_assert_uint_eq(l.ts[i].ip_proto, ts[i].ip_proto);
        ck_assert_uint_eq(l.ts[i].port_start, ts[i].port_start);
        ck_assert_uint_eq(l.ts[i].port_end, ts[i].port_end);
        ck_assert_mem_eq(l.ts[i].addr_start, ts[i].addr_start, ike_ts_addr_len(&ts[i]));
        ck_assert_mem_eq(l.ts[i].addr_end, ts[i].addr_end, ike_ts_addr_len(&ts[i]));
    }
    uint8_t a[16];
    unsigned plen;
    ck_assert_int_eq(ike_ts_to_prefix(&l.ts[0], a, &plen), 0);
    ck_assert_uint_eq(plen, 8);
    ck_assert_uint_eq(a[0], 10);
    ck_assert_uint_eq(a[1], 0);
    ck_assert_int_eq(ike_ts_to_prefix(&l.ts[1], a, &plen), 0);
    ck_assert_uint_eq(plen, 0);
    ck_assert_int_eq(ike_ts_to_prefix(&l.ts[2], a, &plen), 0);
    ck_assert_uint_eq(plen, 64);
    ck_assert_mem_eq(a, v6, 8);

    /* 10.0.0.1 - 10.0.0.5 is a range but no prefix. */
    ike_ts r = ts[0];
    memcpy(r.addr_start, (uint8_t[]){ 10, 0, 0, 1 }, 4);
    memcpy(r.addr_end, (uint8_t[]){ 10, 0, 0, 5 }, 4);
    ck_assert_int_eq(ike_ts_to_prefix(&r, a, &plen), M2MVPN_E_INVAL);
    /* a single host is /32 */
    memcpy(r.addr_end, r.addr_start, 4);
    ck_assert_int_eq(ike_ts_to_prefix(&r, a, &plen), 0);
    ck_assert_uint_eq(plen, 32);
    ck_assert_int_eq(ike_ts_from_prefix(net10, 4, 33, 0, 0, 0, &r), M2MVPN_E_INVAL);
}
END_TEST

START_TEST(test_ts_invalid)
{
    /* One IPv4 selector, 10.0.0.9 .. 10.0.0.1: start above end. */
    uint8_t b[] = {
        1, 0, 0, 0,
        IKE_TS_IPV4_ADDR_RANGE, 0, 0, 16, 0, 0, 0xff, 0xff, 10, 0, 0, 9, 10, 0, 0, 1,
    };
    ike_ts_list l;
    ike_diag d;
    ck_assert_int_eq(ike_ts_parse(buf_reader_make(b, sizeof(b)), &l, &d), M2MVPN_E_PROTOCOL);
    b[15] = 0;
    ck_assert_int_eq(ike_ts_parse(buf_reader_make(b, sizeof(b)), &l, &d), 0);
    b[7] = 17;  /* wrong selector length */
    ck_assert_int_eq(ike_ts_parse(buf_reader_make(b, sizeof(b)), &l, &d), M2MVPN_E_PROTOCOL);
    b[7] = 16;
    b[0] = 2;   /* count says 2 */
    ck_assert_int_eq(ike_ts_parse(buf_reader_make(b, sizeof(b)), &l, &d), M2MVPN_E_PROTOCOL);
    b[0] = 1;
    b[4] = 9;   /* unknown TS type: skipped by its length */
    ck_assert_int_eq(ike_ts_parse(buf_reader_make(b, sizeof(b)), &l, &d), 0);
    ck_assert_uint_eq(l.n, 0);
    ck_assert_uint_eq(l.n_skipped, 1);
    b[0] = 0;
    ck_assert_int_eq(ike_ts_parse(buf_reader_make(b, 4), &l, &d), M2MVPN_E_PROTOCOL);
}
END_TEST

START_TEST(test_cp_round_trip)
{
    static uint8_t buf[MSG_CAP];
    buf_writer w;
    ike_chain_writer cw;
    ike_cp_attr req[] = {
        { IKE_CP_INTERNAL_IP4_ADDRESS, { NULL, 0 } },
        { IKE_CP_INTERNAL_IP4_DNS, { NULL, 0 } },
        { IKE_CP_INTERNAL_IP6_ADDRESS, { NULL, 0 } },
        { IKE_CP_INTERNAL_IP6_DNS, { NULL, 0 } },
    };
    msg_begin(&w, buf, &cw, IKE_EXCH_IKE_AUTH);
    ike_build_cp(&cw, IKE_CFG_REQUEST, req, 4);
    size_t len = msg_end(&w, &cw);
    ck_assert_uint_eq(len, 28 + 4 + 4 + 4 * 4);
    ike_message m;
    ike_payload pl = only_payload(buf, len, IKE_PL_CP, &m);
    ike_cp cp;
    ike_diag d;
    ck_assert_int_eq(ike_cp_parse(pl.body, &cp, &d), 0);
    ck_assert_uint_eq(cp.cfg_type, IKE_CFG_REQUEST);
    ck_assert_uint_eq(cp.n, 4);
    ck_assert_uint_eq(cp.attr[2].type, IKE_CP_INTERNAL_IP6_ADDRESS);
    ck_assert_uint_eq(cp.attr[2].value.len, 0);

    const uint8_t vip[4] = { 198, 18, 0, 7 };
    const uint8_t dns1[4] = { 198, 18, 0, 1 };
    const uint8_t dns2[4] = { 198, 18, 0, 2 };
    const uint8_t vip6[17] = { 0xfd, 0, [15] = 7, [16] = 64 };
    ike_cp_attr rep[] = {
        { IKE_CP_INTERNAL_IP4_ADDRESS, { vip, 4 } },
        { IKE_CP_INTERNAL_IP4_DNS, { dns1, 4 } },
        { IKE_CP_INTERNAL_IP4_DNS, { dns2, 4 } },
        { IKE_CP_INTERNAL_IP6_ADDRESS, { vip6, 17 } },
    };
    msg_begin(&w, buf, &cw, IKE_EXCH_IKE_AUTH);
    ike_build_cp(&cw, IKE_CFG_REPLY, rep, 4);
    len = msg_end(&w, &cw);
    pl = only_payload(buf, len, IKE_PL_CP, &m);
    ck_assert_int_eq(ike_cp_parse(pl.body, &cp, &d), 0);
    ck_assert_uint_eq(cp.cfg_type, IKE_CFG_REPLY);
    const ike_cp_attr *a = ike_cp_find(&cp, IKE_CP_INTERNAL_IP4_DNS, NULL);
    ck_assert_ptr_nonnull(a);
    assert_view_eq(a->value, dns1, 4);
    a = ike_cp_find(&cp, IKE_CP_INTERNAL_IP4_DNS, a);
    ck_assert_ptr_nonnull(a);
    assert_view_eq(a->value, dns2, 4);
    ck_assert_ptr_null(ike_cp_find(&cp, IKE_CP_INTERNAL_IP4_DNS, a));
    assert_view_eq(ike_cp_find(&cp, IKE_CP_INTERNAL_IP6_ADDRESS, NULL)->value, vip6, 17);

    /* An IPv4 address of 3 bytes, and an attribute longer than the payload. */
    uint8_t bad[] = { IKE_CFG_REPLY, 0, 0, 0, 0, 1, 0, 3, 198, 18, 0 };
    ck_assert_int_eq(ike_cp_parse(buf_reader_make(bad, sizeof(bad)), &cp, &d),
                     M2MVPN_E_PROTOCOL);
    bad[7] = 4;
    ck_assert_int_eq(ike_cp_parse(buf_reader_make(bad, sizeof(bad)), &cp, &d),
                     M2MVPN_E_PROTOCOL);
}
END_TEST

/* --------------------------------------------------- full IKE_SA_INIT */

static size_t build_sa_init(uint8_t *buf)
{
    buf_writer w;
    ike_chain_writer cw;
    msg_begin(&w, buf, &cw, IKE_EXCH_IKE_SA_INIT);
    proposal p = ike_proposal_gcm();
    uint8_t ke[32];
    for (size_t i = 0; i < sizeof(ke); i++)
        ke[i] = (uint8_t)(0x80 + i);
    uint8_t natd_s[20], natd_d[20];
    memset(natd_s, 0x5a, 20);
    memset(natd_d, 0xa5, 20);
    const uint8_t hash_algs[] = { 0, 2, 0, 3, 0, 4 };  /* SHA2-256/384/512 (RFC 7427 §4) */
    ike_build_sa(&cw, &p, 1, IKE_PROTO_IKE, NULL, 0);
    ike_build_ke(&cw, KE_X25519, ke, sizeof(ke));
    ike_build_nonce(&cw, nonce32, sizeof(nonce32));
    ike_build_notify(&cw, 0, IKE_N_NAT_DETECTION_SOURCE_IP, NULL, 0, natd_s, 20);
    ike_build_notify(&cw, 0, IKE_N_NAT_DETECTION_DESTINATION_IP, NULL, 0, natd_d, 20);
    ike_build_notify(&cw, 0, IKE_N_IKEV2_FRAGMENTATION_SUPPORTED, NULL, 0, NULL, 0);
    ike_build_notify(&cw, 0, IKE_N_SIGNATURE_HASH_ALGORITHMS, NULL, 0, hash_algs, 6);
    return msg_end(&w, &cw);
}

START_TEST(test_sa_init_request)
{
    static uint8_t buf[MSG_CAP];
    size_t len = build_sa_init(buf);
    ike_message m;
    ike_diag d;
    ck_assert_msg(ike_message_parse(buf_reader_make(buf, len), &m, &d) == 0, "%s", d.text);
    ck_assert_uint_eq(m.hdr.exchange, IKE_EXCH_IKE_SA_INIT);
    ck_assert_uint_eq(m.hdr.flags, IKE_FLAG_INITIATOR);
    ck_assert_uint_eq(m.hdr.length, len);
    ck_assert_uint_eq(m.chain.n, 7);
    const uint8_t order[] = { IKE_PL_SA, IKE_PL_KE, IKE_PL_NONCE, IKE_PL_NOTIFY,
                              IKE_PL_NOTIFY, IKE_PL_NOTIFY, IKE_PL_NOTIFY };
    for (size_t i = 0; i < 7; i++) {
        ck_assert_uint_eq(m.chain.pl[i].type, order[i]);
        ck_assert_uint_eq(m.chain.pl[i].next_type, i + 1 < 7 ? order[i + 1] : 0);
    }
    ck_assert_uint_eq(m.chain.pl[0].offset, 28);
    ike_sa_view sa;
    ck_assert_int_eq(ike_sa_parse(m.chain.pl[0].body, &sa, &d), 0);
    ck_assert_uint_eq(sa.n_prop, 1);
    ike_ke ke;
    ck_assert_int_eq(ike_ke_parse(m.chain.pl[1].body, &ke, &d), 0);
    ck_assert_uint_eq(ke.group, KE_X25519);
    ck_assert_uint_eq(ke.data.len, 32);
    ike_notify n;
    ck_assert_int_eq(ike_chain_find_notify(&m.chain, IKE_N_IKEV2_FRAGMENTATION_SUPPORTED, &n, &d), 0);
    ck_assert_uint_eq(n.data.len, 0);
    ck_assert_int_eq(ike_chain_find_notify(&m.chain, IKE_N_SIGNATURE_HASH_ALGORITHMS, &n, &d), 0);
    ck_assert_uint_eq(n.data.len, 6);
    ck_assert_int_eq(ike_chain_find_notify(&m.chain, IKE_N_NAT_DETECTION_DESTINATION_IP, &n, &d), 0);
    ck_assert_uint_eq(n.data.p[0], 0xa5);
}
END_TEST

START_TEST(test_truncated_everywhere)
{
    static uint8_t buf[MSG_CAP];
    static uint8_t cut[MSG_CAP];
    size_t len = build_sa_init(buf);
    ike_message m;
    ike_diag d;
    for (size_t n = 0; n < len; n++) {
        /* As received: declared length no longer matches. */
        memcpy(cut, buf, n);
        ck_assert_int_eq(ike_message_parse(buf_reader_make(cut, n), &m, &d), M2MVPN_E_PROTOCOL);
        /* With the header length patched to match, the chain walker must
         * catch it (every payload boundary leaves a broken chain). */
        if (n >= 28) {
            buf_store_be32(cut + 24, (uint32_t)n);
            ck_assert_msg(ike_message_parse(buf_reader_make(cut, n), &m, &d) == M2MVPN_E_PROTOCOL,
                          "truncated at %zu accepted", n);
        }
    }
    /* Overlong: the Nonce payload claims 9000 bytes. */
    memcpy(cut, buf, len);
    ck_assert_int_eq(ike_message_parse(buf_reader_make(cut, len), &m, &d), 0);
    size_t at = m.chain.pl[2].offset;
    buf_store_be16(cut + at + 2, 9000);
    ck_assert_int_eq(ike_message_parse(buf_reader_make(cut, len), &m, &d), M2MVPN_E_PROTOCOL);
    ck_assert_ptr_nonnull(strstr(d.text, "payload 40 (Nonce): length 9000 exceeds remaining"));
    ck_assert_uint_eq(d.notify, IKE_N_INVALID_SYNTAX);
    /* Length 3: shorter than the generic header. */
    buf_store_be16(cut + at + 2, 3);
    ck_assert_int_eq(ike_message_parse(buf_reader_make(cut, len), &m, &d), M2MVPN_E_PROTOCOL);
    /* Trailing bytes after the last payload. */
    memcpy(cut, buf, len);
    cut[len] = 0;
    buf_store_be32(cut + 24, (uint32_t)len + 1);
    ck_assert_int_eq(ike_message_parse(buf_reader_make(cut, len + 1), &m, &d), M2MVPN_E_PROTOCOL);
}
END_TEST

START_TEST(test_unknown_payloads)
{
    static uint8_t buf[MSG_CAP];
    buf_writer w;
    ike_chain_writer cw;
    const uint8_t junk[5] = { 1, 2, 3, 4, 5 };
    msg_begin(&w, buf, &cw, IKE_EXCH_INFORMATIONAL);
    ike_build_nonce(&cw, nonce32, 16);
    ike_build_raw(&cw, 99, false, junk, sizeof(junk));
    ike_build_vendor(&cw, "x", 1);
    size_t len = msg_end(&w, &cw);
    ike_message m;
    ike_diag d;
    ck_assert_int_eq(ike_message_parse(buf_reader_make(buf, len), &m, &d), 0);
    ck_assert_uint_eq(m.chain.n, 2);
    ck_assert_uint_eq(m.chain.n_skipped, 1);
    ck_assert_uint_eq(m.chain.pl[0].type, IKE_PL_NONCE);
    ck_assert_uint_eq(m.chain.pl[0].next_type, 99);
    ck_assert_uint_eq(m.chain.pl[1].type, IKE_PL_VENDOR);

    msg_begin(&w, buf, &cw, IKE_EXCH_INFORMATIONAL);
    ike_build_nonce(&cw, nonce32, 16);
    ike_build_raw(&cw, 99, true, junk, sizeof(junk));
    len = msg_end(&w, &cw);
    ck_assert_int_eq(ike_message_parse(buf_reader_make(buf, len), &m, &d), M2MVPN_E_PROTOCOL);
    ck_assert_uint_eq(d.notify, IKE_N_UNSUPPORTED_CRITICAL_PAYLOAD);
    ck_assert_uint_eq(d.payload_type, 99);

    /* A known payload with the critical bit is fine (§2.5). */
    msg_begin(&w, buf, &cw, IKE_EXCH_INFORMATIONAL);
    ike_build_raw(&cw, IKE_PL_VENDOR, true, junk, sizeof(junk));
    len = msg_end(&w, &cw);
    ck_assert_int_eq(ike_message_parse(buf_reader_make(buf, len), &m, &d), 0);
    ck_assert(m.chain.pl[0].critical);

    /* More than IKE_MAX_PAYLOADS payloads. */
    msg_begin(&w, buf, &cw, IKE_EXCH_INFORMATIONAL);
    for (int i = 0; i < IKE_MAX_PAYLOADS + 1; i++)
        ike_build_vendor(&cw, "v", 1);
    len = msg_end(&w, &cw);
    ck_assert_int_eq(ike_message_parse(buf_reader_make(buf, len), &m, &d), M2MVPN_E_PROTOCOL);
    ck_assert_ptr_nonnull(strstr(d.text, "more than 64"));
}
END_TEST

/* ------------------------------------------------ toy cipher for SK tests */

/*
 * Not cryptography: XOR keystream + FNV-1a checksum as "ICV". It has the
 * shape of both kinds of IKE cipher, so the layout is exercised for AEAD
 * (checksum over aad | iv | ct) and for encrypt-then-MAC (checksum over the
 * integrity span), and any changed byte in the protected span is detected.
 */
typedef struct toy_cipher {
    bool aead;
    size_t iv_len, icv_len;
    uint8_t key;
    uint8_t iv_counter;
    int seals, opens;
} toy_cipher;

static uint64_t fnv(uint64_t h, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static void toy_icv(const toy_cipher *t, const uint8_t *aad, size_t aad_len, const uint8_t *iv,
                    size_t iv_len, const uint8_t *ct, size_t ct_len, const uint8_t *integ,
                    size_t integ_len, uint8_t *icv, size_t icv_len)
{
    uint64_t h = 0xcbf29ce484222325ULL ^ t->key;
    if (t->aead) {
        h = fnv(h, aad, aad_len);
        h = fnv(h, iv, iv_len);
        h = fnv(h, ct, ct_len);
    } else {
        h = fnv(h, integ, integ_len);
    }
    for (size_t i = 0; i < icv_len; i++)
        icv[i] = (uint8_t)(h >> (8 * (i % 8))) ^ (uint8_t)i;
}

static void toy_xor(const toy_cipher *t, const uint8_t *iv, size_t iv_len, const uint8_t *in,
                    uint8_t *out, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = in[i] ^ (uint8_t)(t->key + 7 * i + (iv_len ? iv[i % iv_len] : 0));
}

static int toy_seal(void *ctx, const ike_sk_seal_io *io);
static int toy_open(void *ctx, const ike_sk_open_io *io);

static ike_sk_cipher toy_make(toy_cipher *t, bool aead, size_t iv, size_t icv, size_t block)
{
    memset(t, 0, sizeof(*t));
    t->aead = aead;
    t->iv_len = iv;
    t->icv_len = icv;
    t->key = 0x3c;
    ike_sk_cipher c = { iv, icv, block, toy_seal, toy_open, t };
    return c;
}

static int toy_seal(void *ctx, const ike_sk_seal_io *io)
{
    toy_cipher *t = ctx;
    for (size_t i = 0; i < t->iv_len; i++)
        io->iv[i] = (uint8_t)(t->iv_counter + i);
    t->iv_counter++;
    toy_xor(t, io->iv, t->iv_len, io->text, io->text, io->text_len);
    toy_icv(t, io->aad, io->aad_len, io->iv, t->iv_len, io->text, io->text_len, io->integ,
            io->integ_len, io->icv, t->icv_len);
    t->seals++;
    return 0;
}

static int toy_open(void *ctx, const ike_sk_open_io *io)
{
    toy_cipher *t = ctx;
    uint8_t icv[64];
    toy_icv(t, io->aad, io->aad_len, io->iv, t->iv_len, io->ct, io->ct_len, io->integ,
            io->integ_len, icv, t->icv_len);
    t->opens++;
    if (memcmp(icv, io->icv, t->icv_len) != 0)
        return M2MVPN_E_CRYPTO;
    toy_xor(t, io->iv, t->iv_len, io->ct, io->out, io->ct_len);
    return 0;
}

static ike_sk_cipher toy_setup(toy_cipher *t, bool aead, size_t iv, size_t icv, size_t block)
{
    return toy_make(t, aead, iv, icv, block);
}

/* Build INFORMATIONAL { SK { IDi, AUTH, N(INITIAL_CONTACT) } }. */
static size_t build_protected(uint8_t *buf, const ike_sk_cipher *c, ike_sk_spans *spans,
                              uint8_t forced_pad)
{
    buf_writer w;
    buf_writer_init(&w, buf, MSG_CAP);
    ike_header h = test_header(IKE_EXCH_IKE_AUTH, 1);
    h.spi_r = 0x1111222233334444ULL;
    ike_header_build(&w, &h);
    ike_sk_builder sk;
    ck_assert_int_eq(ike_sk_begin(&sk, &w, 0, c), 0);
    ike_build_id(&sk.inner, IKE_PL_IDI, IKE_ID_FQDN, "dev1.m2m.test", 13);
    ike_build_auth(&sk.inner, IKE_AUTH_SHARED_KEY_MIC, nonce32, 32);
    ike_build_notify(&sk.inner, 0, IKE_N_INITIAL_CONTACT, NULL, 0, NULL, 0);
    ck_assert_int_eq(ike_sk_finish(&sk, spans), 0);
    if (forced_pad)
        buf[spans->plaintext.off + spans->plaintext.len - 1] = forced_pad;
    ck_assert_int_eq(ike_sk_seal(buf, spans, c), 0);
    return buf_writer_len(&w);
}

static void check_protected_inner(const ike_chain *inner)
{
    ck_assert_uint_eq(inner->n, 3);
    ck_assert_uint_eq(inner->pl[0].type, IKE_PL_IDI);
    ck_assert_uint_eq(inner->pl[1].type, IKE_PL_AUTH);
    ck_assert_uint_eq(inner->pl[2].type, IKE_PL_NOTIFY);
    ike_id id;
    ck_assert_int_eq(ike_id_parse(inner->pl[0].body, &id, NULL), 0);
    assert_view_eq(id.data, "dev1.m2m.test", 13);
    ike_auth a;
    ck_assert_int_eq(ike_auth_parse(inner->pl[1].body, &a, NULL), 0);
    assert_view_eq(a.data, nonce32, 32);
}

START_TEST(test_sk_aead_layout)
{
    static uint8_t buf[MSG_CAP];
    static uint8_t out[MSG_CAP];
    toy_cipher t;
    ike_sk_cipher c = toy_setup(&t, true, 8, 16, 1);  /* AES-GCM-16 shape (RFC 5282) */
    ike_sk_spans s;
    size_t len = build_protected(buf, &c, &s, 0);
    /* header 28 + SK header 4 = AAD; IV 8; inner 21+40+8 = 69; pad 0 + 1; ICV 16 */
    ck_assert_uint_eq(s.aad.off, 0);
    ck_assert_uint_eq(s.aad.len, 32);
    ck_assert_uint_eq(s.iv.off, 32);
    ck_assert_uint_eq(s.iv.len, 8);
    ck_assert_uint_eq(s.plaintext.off, 40);
    ck_assert_uint_eq(s.plaintext.len, 70);
    ck_assert_uint_eq(s.icv.off, 110);
    ck_assert_uint_eq(s.icv.len, 16);
    ck_assert_uint_eq(s.integ.len, 110);
    ck_assert_uint_eq(len, 126);
    ck_assert_uint_eq(buf_load_be32(buf + 24), 126);
    ck_assert_uint_eq(ike_sk_message_len(69, &c), 126);
    ck_assert_uint_eq(buf[16], IKE_PL_SK);
    ck_assert_uint_eq(buf[28], IKE_PL_IDI);         /* SK Next Payload: first inner */
    ck_assert_uint_eq(buf_load_be16(buf + 30), 98); /* SK length */
    ck_assert_uint_eq(t.seals, 1);

    ike_message m;
    ike_diag d;
    ck_assert_int_eq(ike_message_parse(buf_reader_make(buf, len), &m, &d), 0);
    ck_assert_uint_eq(m.chain.n, 1);
    ike_chain inner;
    ck_assert_msg(ike_sk_open(&m, &c, out, sizeof(out), &inner, &d) == 0, "%s", d.text);
    check_protected_inner(&inner);

    /* Any change in AAD, IV, ciphertext or ICV fails the check. */
    const size_t probes[] = { 5, 19, 28, 33, 50, 115 };
    for (size_t i = 0; i < sizeof(probes) / sizeof(probes[0]); i++) {
        buf[probes[i]] ^= 0x01;
        if (ike_message_parse(buf_reader_make(buf, len), &m, &d) == 0)
            ck_assert_int_eq(ike_sk_open(&m, &c, out, sizeof(out), &inner, &d), M2MVPN_E_CRYPTO);
        buf[probes[i]] ^= 0x01;
    }
    /* Output too small. */
    ck_assert_int_eq(ike_message_parse(buf_reader_make(buf, len), &m, &d), 0);
    ck_assert_int_eq(ike_sk_open(&m, &c, out, 10, &inner, &d), M2MVPN_E_INVAL);
}
END_TEST

START_TEST(test_sk_cbc_layout)
{
    static uint8_t buf[MSG_CAP];
    static uint8_t out[MSG_CAP];
    toy_cipher t;
    ike_sk_cipher c = toy_setup(&t, false, 16, 16, 16);  /* AES-CBC + HMAC-SHA2-256-128 */
    ike_sk_spans s;
    size_t len = build_protected(buf, &c, &s, 0);
    /* inner 69 bytes + pad 10 + 1 = 80 = 5 blocks */
    ck_assert_uint_eq(s.plaintext.len, 80);
    ck_assert_uint_eq(s.plaintext.len % 16, 0);
    ck_assert_uint_eq(s.integ.off, 0);
    ck_assert_uint_eq(s.integ.len, s.icv.off);
    ck_assert_uint_eq(len, 28 + 4 + 16 + 80 + 16);
    ck_assert_uint_eq(ike_sk_message_len(69, &c), len);
    ike_message m;
    ike_diag d;
    ike_chain inner;
    ck_assert_int_eq(ike_message_parse(buf_reader_make(buf, len), &m, &d), 0);
    ck_assert_msg(ike_sk_open(&m, &c, out, sizeof(out), &inner, &d) == 0, "%s", d.text);
    check_protected_inner(&inner);
    /* The header is covered by the integrity span too. */
    buf[20] ^= 0x80;
    ck_assert_int_eq(ike_message_parse(buf_reader_make(buf, len), &m, &d), 0);
    ck_assert_int_eq(ike_sk_open(&m, &c, out, sizeof(out), &inner, &d), M2MVPN_E_CRYPTO);
    buf[20] ^= 0x80;

    /* Ciphertext that is not whole blocks: rejected before decrypting. */
    int opens = t.opens;
    ike_sk_parts parts;
    ck_assert_int_eq(ike_sk_split(buf_reader_make(buf, 16 + 17 + 16), 16, 16, 16, &parts, &d),
                     M2MVPN_E_PROTOCOL);
    ck_assert_int_eq(ike_sk_split(buf_reader_make(buf, 16 + 16), 16, 16, 16, &parts, &d),
                     M2MVPN_E_PROTOCOL);
    ck_assert_int_eq(ike_sk_split(buf_reader_make(buf, 16 + 16 + 16), 16, 16, 16, &parts, &d), 0);
    ck_assert_int_eq(t.opens, opens);
}
END_TEST

START_TEST(test_sk_padding)
{
    static uint8_t buf[MSG_CAP];
    static uint8_t out[MSG_CAP];
    toy_cipher t;
    ike_sk_cipher c = toy_setup(&t, false, 16, 16, 16);
    ike_sk_spans s;
    /* The sender claims 200 bytes of padding in 80 bytes of plaintext. */
    size_t len = build_protected(buf, &c, &s, 200);
    ike_message m;
    ike_diag d;
    ike_chain inner;
    ck_assert_int_eq(ike_message_parse(buf_reader_make(buf, len), &m, &d), 0);
    ck_assert_int_eq(ike_sk_open(&m, &c, out, sizeof(out), &inner, &d), M2MVPN_E_PROTOCOL);
    ck_assert_ptr_nonnull(strstr(d.text, "Pad Length 200"));

    size_t inner_len;
    const uint8_t p1[] = { 0xaa, 0xbb, 0x00, 0x01 };   /* 1 byte of padding */
    ck_assert_int_eq(ike_sk_strip_padding(p1, 4, &inner_len, &d), 0);
    ck_assert_uint_eq(inner_len, 2);
    const uint8_t p2[] = { 0x00, 0x00, 0x03 };         /* 3 claimed, 2 there */
    ck_assert_int_eq(ike_sk_strip_padding(p2, 3, &inner_len, &d), M2MVPN_E_PROTOCOL);
    const uint8_t p3[] = { 0x00, 0x00, 0x02 };         /* exactly all: empty inner */
    ck_assert_int_eq(ike_sk_strip_padding(p3, 3, &inner_len, &d), 0);
    ck_assert_uint_eq(inner_len, 0);
    ck_assert_int_eq(ike_sk_strip_padding(p3, 0, &inner_len, &d), M2MVPN_E_PROTOCOL);
    ck_assert_uint_eq(ike_sk_pad_len(65, 16), 14);
    ck_assert_uint_eq(ike_sk_pad_len(15, 16), 0);
    ck_assert_uint_eq(ike_sk_pad_len(16, 16), 15);
    ck_assert_uint_eq(ike_sk_pad_len(99, 1), 0);
}
END_TEST

START_TEST(test_sk_wrap_and_empty)
{
    static uint8_t inner[MSG_CAP];
    static uint8_t buf[MSG_CAP];
    static uint8_t out[MSG_CAP];
    toy_cipher t;
    ike_sk_cipher c = toy_setup(&t, true, 8, 16, 1);
    /* A free-standing inner chain, then wrapped. */
    buf_writer iw;
    ike_chain_writer cw;
    buf_writer_init(&iw, inner, sizeof(inner));
    ike_chain_writer_init(&cw, &iw, SIZE_MAX);
    ike_build_delete(&cw, IKE_PROTO_IKE, 0, NULL, 0);
    ike_chain_writer_finish(&cw);
    ck_assert(ike_chain_writer_ok(&cw));
    ck_assert_uint_eq(cw.first_type, IKE_PL_DELETE);

    buf_writer w;
    buf_writer_init(&w, buf, sizeof(buf));
    ike_header h = test_header(IKE_EXCH_INFORMATIONAL, 7);
    ck_assert_int_eq(ike_sk_wrap(&h, inner, buf_writer_len(&iw), cw.first_type, &c, &w), 0);
    ike_message m;
    ike_diag d;
    ike_chain ch;
    ck_assert_int_eq(ike_message_parse(buf_reader_make(buf, buf_writer_len(&w)), &m, &d), 0);
    ck_assert_uint_eq(m.hdr.message_id, 7);
    ck_assert_int_eq(ike_sk_open(&m, &c, out, sizeof(out), &ch, &d), 0);
    ck_assert_uint_eq(ch.n, 1);
    ck_assert_uint_eq(ch.pl[0].type, IKE_PL_DELETE);

    /* An empty INFORMATIONAL (liveness check): SK with no inner payloads. */
    buf_writer_init(&w, buf, sizeof(buf));
    ck_assert_int_eq(ike_sk_wrap(&h, NULL, 0, IKE_PL_NONE, &c, &w), 0);
    ck_assert_int_eq(ike_message_parse(buf_reader_make(buf, buf_writer_len(&w)), &m, &d), 0);
    ck_assert_int_eq(ike_sk_open(&m, &c, out, sizeof(out), &ch, &d), 0);
    ck_assert_uint_eq(ch.n, 0);

    /* A message without SK cannot be opened. */
    size_t len = build_sa_init(buf);
    ck_assert_int_eq(ike_message_parse(buf_reader_make(buf, len), &m, &d), 0);
    ck_assert_int_eq(ike_sk_open(&m, &c, out, sizeof(out), &ch, &d), M2MVPN_E_PROTOCOL);
}
END_TEST

START_TEST(test_sk_must_be_last)
{
    static uint8_t buf[MSG_CAP];
    buf_writer w;
    ike_chain_writer cw;
    const uint8_t body[40] = { 0 };
    msg_begin(&w, buf, &cw, IKE_EXCH_IKE_AUTH);
    ike_build_raw(&cw, IKE_PL_SK, false, body, sizeof(body));
    size_t len = msg_end(&w, &cw);
    /* Make the SK claim only half of the rest, leaving bytes after it. */
    buf_store_be16(buf + 28 + 2, 24);
    ike_message m;
    ike_diag d;
    ck_assert_int_eq(ike_message_parse(buf_reader_make(buf, len), &m, &d), M2MVPN_E_PROTOCOL);
    ck_assert_ptr_nonnull(strstr(d.text, "must be the last"));
}
END_TEST

/* -------------------------------------------------------- fragmentation */

static size_t build_big_inner(uint8_t *inner, uint8_t *first)
{
    static uint8_t cert[3000];
    for (size_t i = 0; i < sizeof(cert); i++)
        cert[i] = (uint8_t)(i * 13);
    buf_writer w;
    ike_chain_writer cw;
    buf_writer_init(&w, inner, MSG_CAP);
    ike_chain_writer_init(&cw, &w, SIZE_MAX);
    ike_build_id(&cw, IKE_PL_IDI, IKE_ID_FQDN, "dev1.m2m.test", 13);
    ike_build_cert(&cw, IKE_CERT_X509_SIGNATURE, cert, sizeof(cert));
    ike_build_auth(&cw, IKE_AUTH_DIGITAL_SIGNATURE, nonce32, 32);
    ike_chain_writer_finish(&cw);
    ck_assert(ike_chain_writer_ok(&cw));
    *first = cw.first_type;
    return buf_writer_len(&w);
}

typedef struct frag_set {
    uint8_t buf[MSG_CAP * 2];
    ike_span span[IKE_FRAG_MAX_FRAGMENTS];
    size_t n;
} frag_set;

static void make_frags(frag_set *fs, const uint8_t *inner, size_t inner_len, uint8_t first,
                       const ike_sk_cipher *c, size_t max_len, uint32_t msgid)
{
    ike_header h = test_header(IKE_EXCH_IKE_AUTH, msgid);
    ck_assert_int_eq(ike_frag_build(&h, inner, inner_len, first, c, max_len, fs->buf,
                                     sizeof(fs->buf), fs->span, IKE_FRAG_MAX_FRAGMENTS, &fs->n), 0);
}

static int add_frag(ike_frag_reasm *r, const frag_set *fs, size_t i, const ike_sk_cipher *c,
                    ike_chain *inner, ike_diag *d)
{
    ike_message m;
    buf_reader raw = buf_reader_make(fs->buf + fs->span[i].off, fs->span[i].len);
    ck_assert_msg(ike_message_parse(raw, &m, d) == 0, "%s", d->text);
    return ike_frag_add(r, &m, c, inner, d);
}

static void check_big_inner(const ike_chain *ch, const ike_frag_reasm *r, const uint8_t *inner,
                            size_t inner_len)
{
    ck_assert_uint_eq(r->joined_len, inner_len);
    ck_assert_mem_eq(r->joined, inner, inner_len);
    ck_assert_uint_eq(ch->n, 3);
    ck_assert_uint_eq(ch->pl[1].type, IKE_PL_CERT);
    ck_assert_uint_eq(ch->pl[1].body.len, 3001);
}

START_TEST(test_frag_in_order)
{
    static uint8_t inner[MSG_CAP];
    static frag_set fs;
    uint8_t first;
    size_t inner_len = build_big_inner(inner, &first);
    toy_cipher t;
    ike_sk_cipher c = toy_setup(&t, true, 8, 16, 1);
    make_frags(&fs, inner, inner_len, first, &c, 576, 1);
    ck_assert_uint_gt(fs.n, 5);
    ck_assert_uint_eq(t.seals, (int)fs.n);
    for (size_t i = 0; i < fs.n; i++) {
        ck_assert_uint_le(fs.span[i].len, 576);
        const uint8_t *p = fs.buf + fs.span[i].off;
        ck_assert_uint_eq(p[16], IKE_PL_SKF);
        ck_assert_uint_eq(p[28], i == 0 ? IKE_PL_IDI : 0);
        ck_assert_uint_eq(buf_load_be16(p + 32), i + 1);
        ck_assert_uint_eq(buf_load_be16(p + 34), fs.n);
    }
    ike_frag_reasm r;
    ike_frag_reasm_init(&r);
    ike_chain ch;
    ike_diag d;
    for (size_t i = 0; i < fs.n; i++) {
        int rc = add_frag(&r, &fs, i, &c, &ch, &d);
        ck_assert_msg(rc == (i + 1 == fs.n ? 1 : 0), "fragment %zu: %d %s", i, rc, d.text);
    }
    check_big_inner(&ch, &r, inner, inner_len);
    ike_frag_reasm_reset(&r);
    ck_assert(!r.active);
    ck_assert_ptr_null(r.joined);

    /* CBC shape too: every fragment's ciphertext is whole blocks. */
    ike_sk_cipher cbc = toy_setup(&t, false, 16, 16, 16);
    make_frags(&fs, inner, inner_len, first, &cbc, 1280, 2);
    for (size_t i = 0; i < fs.n; i++) {
        ck_assert_uint_le(fs.span[i].len, 1280);
        ck_assert_uint_eq((fs.span[i].len - 28 - 8 - 16 - 16) % 16, 0);
    }
    int rc = 0;
    for (size_t i = 0; i < fs.n; i++)
        rc = add_frag(&r, &fs, i, &cbc, &ch, &d);
    ck_assert_int_eq(rc, 1);
    check_big_inner(&ch, &r, inner, inner_len);
    ike_frag_reasm_reset(&r);
}
END_TEST

START_TEST(test_frag_out_of_order_duplicates)
{
    static uint8_t inner[MSG_CAP];
    static frag_set fs;
    uint8_t first;
    size_t inner_len = build_big_inner(inner, &first);
    toy_cipher t;
    ike_sk_cipher c = toy_setup(&t, true, 8, 16, 1);
    make_frags(&fs, inner, inner_len, first, &c, 500, 3);
    ike_frag_reasm r;
    ike_frag_reasm_init(&r);
    ike_chain ch;
    ike_diag d;
    /* Last to first, each fragment twice; the first fragment arrives last. */
    for (size_t k = fs.n; k-- > 0;) {
        int rc = add_frag(&r, &fs, k, &c, &ch, &d);
        ck_assert_int_eq(rc, k == 0 ? 1 : 0);
        if (k > 0) {
            ck_assert_int_eq(add_frag(&r, &fs, k, &c, &ch, &d), 0);
            ck_assert_uint_eq(r.received, fs.n - k);
        }
    }
    check_big_inner(&ch, &r, inner, inner_len);
    /* After completion, a retransmitted fragment changes nothing. */
    ck_assert_int_eq(add_frag(&r, &fs, 1, &c, &ch, &d), 0);
    ck_assert_uint_eq(r.joined_len, inner_len);
    ike_frag_reasm_reset(&r);
}
END_TEST

START_TEST(test_frag_inconsistent)
{
    static uint8_t inner[MSG_CAP];
    static frag_set small, big, other;
    uint8_t first;
    size_t inner_len = build_big_inner(inner, &first);
    toy_cipher t;
    ike_sk_cipher c = toy_setup(&t, true, 8, 16, 1);
    make_frags(&small, inner, inner_len, first, &c, 400, 5);   /* more fragments */
    make_frags(&big, inner, inner_len, first, &c, 1200, 5);    /* fewer fragments */
    make_frags(&other, inner, inner_len, first, &c, 1200, 6);  /* another message */
    ck_assert_uint_gt(small.n, big.n);
    ike_frag_reasm r;
    ike_frag_reasm_init(&r);
    ike_chain ch;
    ike_diag d;

    ck_assert_int_eq(add_frag(&r, &big, 0, &c, &ch, &d), 0);
    /* Forged fragments of another message (another ID; the same ID in
     * another exchange or direction) fail their ICV and change nothing. */
    uint8_t *o = other.buf + other.span[1].off;
    o[other.span[1].len - 1] ^= 0xff;
    ck_assert_int_eq(add_frag(&r, &other, 1, &c, &ch, &d), M2MVPN_E_CRYPTO);
    o[other.span[1].len - 1] ^= 0xff;
    uint8_t *hd = big.buf + big.span[1].off;
    hd[18] = IKE_EXCH_INFORMATIONAL;
    ck_assert_int_eq(add_frag(&r, &big, 1, &c, &ch, &d), M2MVPN_E_CRYPTO);
    hd[18] = IKE_EXCH_IKE_AUTH;
    hd[19] ^= IKE_FLAG_RESPONSE;
    ck_assert_int_eq(add_frag(&r, &big, 1, &c, &ch, &d), M2MVPN_E_CRYPTO);
    hd[19] ^= IKE_FLAG_RESPONSE;
    ck_assert(r.active);
    ck_assert_uint_eq(r.message_id, 5);
    ck_assert_uint_eq(r.received, 1);
    ck_assert_ptr_nonnull(r.frag[0]);
    /* A forged fragment (ICV broken) is rejected and stores nothing. */
    uint8_t *p = big.buf + big.span[1].off;
    p[big.span[1].len - 1] ^= 0xff;
    ck_assert_int_eq(add_frag(&r, &big, 1, &c, &ch, &d), M2MVPN_E_CRYPTO);
    p[big.span[1].len - 1] ^= 0xff;
    ck_assert_uint_eq(r.received, 1);
    ck_assert_uint_eq(r.total, big.n);
    /* A larger Total Fragments: the peer re-fragmented; start over. */
    ck_assert_int_eq(add_frag(&r, &small, 2, &c, &ch, &d), 0);
    ck_assert_uint_eq(r.total, small.n);
    ck_assert_uint_eq(r.received, 1);
    /* Now a smaller Total Fragments is inconsistent and rejected. */
    ck_assert_int_eq(add_frag(&r, &big, 1, &c, &ch, &d), M2MVPN_E_PROTOCOL);
    ck_assert_ptr_nonnull(strstr(d.text, "Total Fragments"));
    ck_assert_uint_eq(r.received, 1);
    int rc = 0;
    for (size_t i = 0; i < small.n; i++)
        rc = add_frag(&r, &small, i, &c, &ch, &d);
    ck_assert_int_eq(rc, 1);
    check_big_inner(&ch, &r, inner, inner_len);
    ike_frag_reasm_reset(&r);

    /* An authentic fragment of another message replaces the one being
     * reassembled (the peer moved on), and that message completes. */
    ck_assert_int_eq(add_frag(&r, &big, 0, &c, &ch, &d), 0);
    ck_assert_int_eq(add_frag(&r, &other, 1, &c, &ch, &d), 0);
    ck_assert_uint_eq(r.message_id, 6);
    ck_assert_uint_eq(r.received, 1);
    rc = 0;
    for (size_t i = 0; i < other.n; i++)
        rc = add_frag(&r, &other, i, &c, &ch, &d);
    ck_assert_int_eq(rc, 1);
    check_big_inner(&ch, &r, inner, inner_len);
    ike_frag_reasm_reset(&r);

    /* Fragment number 0, number above total, and total above the limit. */
    ike_skf skf;
    uint8_t body[4 + 8 + 16 + 16] = { 0 };
    buf_store_be16(body, 0);
    buf_store_be16(body + 2, 3);
    ck_assert_int_eq(ike_skf_parse(buf_reader_make(body, sizeof(body)), 8, 16, 1, &skf, &d),
                     M2MVPN_E_PROTOCOL);
    buf_store_be16(body, 4);
    ck_assert_int_eq(ike_skf_parse(buf_reader_make(body, sizeof(body)), 8, 16, 1, &skf, &d),
                     M2MVPN_E_PROTOCOL);
    buf_store_be16(body, 3);
    ck_assert_int_eq(ike_skf_parse(buf_reader_make(body, sizeof(body)), 8, 16, 1, &skf, &d), 0);
    ck_assert_uint_eq(skf.parts.ct.len, 16);

    /* Build limits: too small a message, too many fragments. */
    ike_header h = test_header(IKE_EXCH_IKE_AUTH, 9);
    size_t n;
    ck_assert_int_eq(ike_frag_build(&h, inner, inner_len, first, &c, 28 + 8 + 8 + 16 + 1,
                                    small.buf, sizeof(small.buf), small.span,
                                    IKE_FRAG_MAX_FRAGMENTS, &n), M2MVPN_E_INVAL);
    ck_assert_int_eq(ike_frag_build(&h, inner, inner_len, first, &c, 100, small.buf,
                                    sizeof(small.buf), small.span, IKE_FRAG_MAX_FRAGMENTS, &n),
                     M2MVPN_E_INVAL);   /* 48 bytes each: 64+ fragments */
}
END_TEST

START_TEST(test_frag_total_limit)
{
    /* A fragment claiming 65 fragments is refused before decryption. */
    static uint8_t inner[MSG_CAP];
    static frag_set fs;
    uint8_t first;
    size_t inner_len = build_big_inner(inner, &first);
    toy_cipher t;
    ike_sk_cipher c = toy_setup(&t, true, 8, 16, 1);
    make_frags(&fs, inner, inner_len, first, &c, 1200, 4);
    buf_store_be16(fs.buf + fs.span[0].off + 34, IKE_FRAG_MAX_FRAGMENTS + 1);
    ike_frag_reasm r;
    ike_frag_reasm_init(&r);
    ike_diag d;
    int opens = t.opens;
    ck_assert_int_eq(add_frag(&r, &fs, 0, &c, NULL, &d), M2MVPN_E_PROTOCOL);
    ck_assert_int_eq(t.opens, opens);
    ck_assert(!r.active);
    ike_frag_reasm_reset(&r);
}
END_TEST

/* ------------------------------------------------ a real strongSwan packet */

/*
 * An IKE_SA_INIT request as strongSwan 5.9.8 (Debian bookworm charon) sent
 * it: proposal aes256gcm16-prfsha256-x25519, PSK config, captured from a
 * charon in a test network namespace (198.51.100.10 -> .11, UDP 500).
 * charon logged: [ SA KE No N(NATD_S_IP) N(NATD_D_IP) N(FRAG_SUP)
 * N(HASH_ALG) N(REDIR_SUP) ], 232 bytes. Key share and nonce are ephemeral.
 */
static const uint8_t swan_sa_init[] = {
    0xfd, 0x70, 0x84, 0x80, 0xed, 0x49, 0x59, 0x47, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x21, 0x20, 0x22, 0x08, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0xe8, 0x22, 0x00, 0x00, 0x28, 0x00, 0x00, 0x00, 0x24,
    0x01, 0x01, 0x00, 0x03, 0x03, 0x00, 0x00, 0x0c, 0x01, 0x00, 0x00, 0x14,
    0x80, 0x0e, 0x01, 0x00, 0x03, 0x00, 0x00, 0x08, 0x02, 0x00, 0x00, 0x05,
    0x00, 0x00, 0x00, 0x08, 0x04, 0x00, 0x00, 0x1f, 0x28, 0x00, 0x00, 0x28,
    0x00, 0x1f, 0x00, 0x00, 0x12, 0xc2, 0x25, 0x53, 0x01, 0xe9, 0x86, 0xf7,
    0xf8, 0x18, 0x1c, 0x67, 0xef, 0x53, 0x46, 0x25, 0x8b, 0x7b, 0x37, 0x76,
    0x51, 0x92, 0x10, 0x4c, 0x14, 0xbe, 0x91, 0x44, 0xef, 0x9e, 0xe9, 0x56,
    0x29, 0x00, 0x00, 0x24, 0xa5, 0xba, 0xef, 0xef, 0xe6, 0x8e, 0xc2, 0x90,
    0xc0, 0x1e, 0x21, 0xde, 0x24, 0xef, 0x96, 0x39, 0xe9, 0x5d, 0x48, 0x70,
    0x64, 0xe0, 0x89, 0x22, 0x4d, 0x35, 0x2e, 0x3e, 0x91, 0x37, 0x7b, 0x54,
    0x29, 0x00, 0x00, 0x1c, 0x00, 0x00, 0x40, 0x04, 0x6f, 0xc4, 0x69, 0x00,
    0xbc, 0x8f, 0xc9, 0x0e, 0xfc, 0x5c, 0x7a, 0xc5, 0xfb, 0xd3, 0x77, 0xda,
    0x2d, 0x95, 0x20, 0xd4, 0x29, 0x00, 0x00, 0x1c, 0x00, 0x00, 0x40, 0x05,
    0x85, 0x6e, 0x13, 0xa4, 0x7b, 0x7a, 0x9d, 0xd9, 0x61, 0x50, 0x67, 0x71,
    0x80, 0x1e, 0x8a, 0x26, 0xb0, 0x45, 0xa7, 0x0c, 0x29, 0x00, 0x00, 0x08,
    0x00, 0x00, 0x40, 0x2e, 0x29, 0x00, 0x00, 0x10, 0x00, 0x00, 0x40, 0x2f,
    0x00, 0x02, 0x00, 0x03, 0x00, 0x04, 0x00, 0x05, 0x00, 0x00, 0x00, 0x08,
    0x00, 0x00, 0x40, 0x16,
};

/*
 * From a second run between two charons (same versions, same network,
 * gateway 198.51.100.11 with local_ts 198.18.0.0/24): the gateway's
 * IKE_SA_INIT response, charon logged [ SA KE No N(NATD_S_IP) N(NATD_D_IP)
 * N(FRAG_SUP) N(HASH_ALG) N(CHDLESS_SUP) N(MULT_AUTH) ], 240 bytes ...
 */
static const uint8_t swan_sa_init_resp[] = {
    0xe9, 0x65, 0x8c, 0x6c, 0x0f, 0x2d, 0x73, 0x07, 0x84, 0x2a, 0x95, 0x37,
    0xa0, 0xa5, 0x16, 0xc1, 0x21, 0x20, 0x22, 0x20, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0xf0, 0x22, 0x00, 0x00, 0x28, 0x00, 0x00, 0x00, 0x24,
    0x01, 0x01, 0x00, 0x03, 0x03, 0x00, 0x00, 0x0c, 0x01, 0x00, 0x00, 0x14,
    0x80, 0x0e, 0x01, 0x00, 0x03, 0x00, 0x00, 0x08, 0x02, 0x00, 0x00, 0x05,
    0x00, 0x00, 0x00, 0x08, 0x04, 0x00, 0x00, 0x1f, 0x28, 0x00, 0x00, 0x28,
    0x00, 0x1f, 0x00, 0x00, 0xe0, 0xce, 0xd7, 0xd7, 0xe8, 0xe4, 0xac, 0x68,
    0xd5, 0x2a, 0x1d, 0xc2, 0x1d, 0x99, 0xa0, 0x15, 0x80, 0x08, 0xeb, 0x90,
    0xf3, 0x24, 0x6f, 0x98, 0x9e, 0x95, 0x03, 0x7c, 0xeb, 0x6e, 0x21, 0x10,
    0x29, 0x00, 0x00, 0x24, 0x70, 0x28, 0xa6, 0x0d, 0x2d, 0xe5, 0xaf, 0x31,
    0xbf, 0xf2, 0xb5, 0xc1, 0x53, 0x65, 0x1b, 0xd7, 0x90, 0xc7, 0xe4, 0xad,
    0x7b, 0xe6, 0x1d, 0x64, 0x6d, 0x59, 0x60, 0xc1, 0xb1, 0x40, 0x8c, 0x2d,
    0x29, 0x00, 0x00, 0x1c, 0x00, 0x00, 0x40, 0x04, 0x9f, 0xfb, 0x58, 0xd9,
    0x2a, 0xe0, 0x16, 0xeb, 0xb2, 0x6c, 0x53, 0xbf, 0x7f, 0xfc, 0x30, 0xa6,
    0x4d, 0xb9, 0x5a, 0xfe, 0x29, 0x00, 0x00, 0x1c, 0x00, 0x00, 0x40, 0x05,
    0xb2, 0xa4, 0xf9, 0x8d, 0xfc, 0x42, 0x99, 0x08, 0x75, 0x1e, 0xcf, 0x75,
    0x55, 0x11, 0x91, 0xfe, 0x8b, 0xab, 0x27, 0x5b, 0x29, 0x00, 0x00, 0x08,
    0x00, 0x00, 0x40, 0x2e, 0x29, 0x00, 0x00, 0x10, 0x00, 0x00, 0x40, 0x2f,
    0x00, 0x02, 0x00, 0x03, 0x00, 0x04, 0x00, 0x05, 0x29, 0x00, 0x00, 0x08,
    0x00, 0x00, 0x40, 0x22, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x40, 0x14,
};

/* ... and the client's IKE_AUTH request as received on UDP 4500 (non-ESP
 * marker included), charon logged [ IDi N(INIT_CONTACT) IDr AUTH SA TSi TSr
 * N(MOBIKE_SUP) N(NO_ADD_ADDR) N(MULT_AUTH) N(EAP_ONLY) N(MSG_ID_SYN_SUP) ],
 * 269 bytes of IKE message, encrypted with AES-GCM-16-256 (IV 8, ICV 16). */
static const uint8_t swan_ike_auth_4500[] = {
    0x00, 0x00, 0x00, 0x00, 0xe9, 0x65, 0x8c, 0x6c, 0x0f, 0x2d, 0x73, 0x07,
    0x84, 0x2a, 0x95, 0x37, 0xa0, 0xa5, 0x16, 0xc1, 0x2e, 0x20, 0x23, 0x08,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x01, 0x0d, 0x23, 0x00, 0x00, 0xf1,
    0xe8, 0x92, 0xbd, 0x40, 0x0d, 0x73, 0xb6, 0xc1, 0xe8, 0x61, 0x9b, 0x99,
    0x63, 0xd1, 0x8d, 0x4e, 0x94, 0x3f, 0x37, 0x18, 0x7f, 0x42, 0x3c, 0x57,
    0xd9, 0x8c, 0x88, 0x08, 0x2c, 0xcc, 0xab, 0x2b, 0x92, 0x20, 0x27, 0xeb,
    0xba, 0x3b, 0x3b, 0xb4, 0xe7, 0x1e, 0x32, 0xfc, 0x04, 0x4d, 0xab, 0x50,
    0xf9, 0x33, 0x5d, 0x40, 0x84, 0xa9, 0x72, 0x4b, 0x30, 0xbb, 0xe5, 0x77,
    0x4b, 0xbe, 0x81, 0xf6, 0x63, 0x19, 0x2e, 0x10, 0x32, 0x3f, 0x75, 0x06,
    0x79, 0x1e, 0xbf, 0x60, 0x56, 0x94, 0x55, 0x3f, 0xdf, 0x23, 0x63, 0x4b,
    0x9c, 0xde, 0xe7, 0x76, 0x4a, 0xd9, 0x66, 0xdf, 0xcb, 0x0e, 0xbf, 0x36,
    0x0a, 0xb2, 0x5c, 0x6e, 0x77, 0x84, 0x88, 0x93, 0xa3, 0xbe, 0x67, 0xee,
    0xb6, 0x19, 0x96, 0x8b, 0xfc, 0x11, 0x91, 0x1e, 0x8e, 0x8a, 0x41, 0xd6,
    0xc9, 0xf8, 0xd3, 0xdd, 0x7f, 0x9c, 0x82, 0x4a, 0x52, 0x31, 0xb4, 0x22,
    0xf6, 0xe9, 0xcf, 0x5e, 0x42, 0x80, 0xcf, 0xe8, 0xa7, 0xc7, 0xc8, 0x41,
    0x77, 0x0d, 0x26, 0xa3, 0x2b, 0x84, 0x71, 0xcc, 0xe5, 0xd0, 0xee, 0xbe,
    0x5b, 0x75, 0xd4, 0x26, 0x2d, 0xdc, 0x71, 0x27, 0xd0, 0xb5, 0xb4, 0xb9,
    0xef, 0x31, 0x77, 0x01, 0x8d, 0x43, 0xce, 0x72, 0x9e, 0xdb, 0x7c, 0x3e,
    0x2c, 0x8d, 0xad, 0xa3, 0x50, 0xf5, 0xd3, 0x42, 0x67, 0xc8, 0xc2, 0x1e,
    0x50, 0xf9, 0x1a, 0x55, 0x5e, 0x3b, 0x8b, 0x77, 0x29, 0x34, 0xdf, 0xe4,
    0x92, 0xaa, 0x9e, 0x14, 0xd3, 0x14, 0x4c, 0xaa, 0x3c, 0x83, 0x71, 0xd4,
    0x5d, 0x95, 0xa3, 0xec, 0x7e, 0xa7, 0xc9, 0xdd, 0x24, 0x80, 0x2d, 0x2c,
    0x70, 0x90, 0xd3, 0xa1, 0x51, 0x3f, 0xaf, 0x95, 0x33,
};

START_TEST(test_strongswan_sa_init)
{
    ike_message m;
    ike_diag d;
    buf_reader r = buf_reader_make(swan_sa_init, sizeof(swan_sa_init));
    ck_assert_msg(ike_message_parse(r, &m, &d) == 0, "%s", d.text);
    ck_assert_uint_eq(m.hdr.exchange, IKE_EXCH_IKE_SA_INIT);
    ck_assert_uint_eq(m.hdr.flags, IKE_FLAG_INITIATOR);
    ck_assert_uint_eq(m.hdr.message_id, 0);
    ck_assert(m.hdr.spi_r == 0);
    ck_assert_uint_eq(m.chain.pl[0].type, IKE_PL_SA);
    ike_sa_view sa;
    ck_assert_msg(ike_sa_parse(m.chain.pl[0].body, &sa, &d) == 0, "%s", d.text);
    ck_assert_uint_eq(sa.n_prop, 1);
    const ike_transform *t = &sa.tr[sa.prop[0].first_transform];
    ck_assert_uint_eq(t[0].type, IKE_TT_ENCR);
    ck_assert_uint_eq(t[0].id, ENCR_AES_GCM_16);
    ck_assert_uint_eq(t[0].key_bits, 256);
    const ike_payload *ke = ike_chain_find(&m.chain, IKE_PL_KE, NULL);
    ck_assert_ptr_nonnull(ke);
    ike_ke k;
    ck_assert_int_eq(ike_ke_parse(ke->body, &k, &d), 0);
    ck_assert_uint_eq(k.group, KE_X25519);
    ck_assert_uint_eq(k.data.len, 32);
    const ike_payload *np = ike_chain_find(&m.chain, IKE_PL_NONCE, NULL);
    ck_assert_ptr_nonnull(np);
    buf_reader nonce;
    ck_assert_int_eq(ike_nonce_parse(np->body, &nonce, &d), 0);
    ike_notify n;
    ck_assert_int_eq(ike_chain_find_notify(&m.chain, IKE_N_NAT_DETECTION_SOURCE_IP, &n, &d), 0);
    ck_assert_uint_eq(n.data.len, 20);  /* SHA-1 (RFC 7296 §2.23) */
    ck_assert_int_eq(ike_chain_find_notify(&m.chain, IKE_N_IKEV2_FRAGMENTATION_SUPPORTED, &n, &d), 0);
    ck_assert_int_eq(ike_chain_find_notify(&m.chain, IKE_N_SIGNATURE_HASH_ALGORITHMS, &n, &d), 0);
    ck_assert_int_eq(ike_chain_find_notify(&m.chain, IKE_N_REDIRECT_SUPPORTED, &n, &d), 0);
    const uint8_t order[] = { IKE_PL_SA, IKE_PL_KE, IKE_PL_NONCE, IKE_PL_NOTIFY, IKE_PL_NOTIFY,
                              IKE_PL_NOTIFY, IKE_PL_NOTIFY, IKE_PL_NOTIFY };
    ck_assert_uint_eq(m.chain.n, sizeof(order));
    for (size_t i = 0; i < m.chain.n; i++)
        ck_assert_uint_eq(m.chain.pl[i].type, order[i]);
    ck_assert_uint_eq(sa.prop[0].n_transforms, 3);
    ck_assert_uint_eq(t[1].type, IKE_TT_PRF);
    ck_assert_uint_eq(t[1].id, PRF_HMAC_SHA2_256);
    ck_assert_uint_eq(t[2].type, IKE_TT_KE);
    ck_assert_uint_eq(t[2].id, KE_X25519);

    /* Our builder produces the same SA payload bytes for the same proposal. */
    static uint8_t buf[MSG_CAP];
    buf_writer w;
    ike_chain_writer cw;
    proposal p;
    memset(&p, 0, sizeof(p));
    p.encr[0] = (proposal_encr){ ENCR_AES_GCM_16, 256 };
    p.n_encr = 1;
    p.prf[0] = PRF_HMAC_SHA2_256;
    p.n_prf = 1;
    p.ke[0] = KE_X25519;
    p.n_ke = 1;
    msg_begin(&w, buf, &cw, IKE_EXCH_IKE_SA_INIT);
    ike_build_sa(&cw, &p, 1, IKE_PROTO_IKE, NULL, 0);
    size_t len = msg_end(&w, &cw);
    const ike_payload *sp = &m.chain.pl[0];
    ck_assert_uint_eq(len - 28 - 4, sp->body.len);
    ck_assert_mem_eq(buf + 32, sp->body.p, sp->body.len);

    /* Every truncation of the real packet is rejected. */
    static uint8_t cut[sizeof(swan_sa_init)];
    for (size_t k = 28; k < sizeof(swan_sa_init); k++) {
        memcpy(cut, swan_sa_init, k);
        buf_store_be32(cut + 24, (uint32_t)k);
        ck_assert_int_eq(ike_message_parse(buf_reader_make(cut, k), &m, &d), M2MVPN_E_PROTOCOL);
    }
}
END_TEST

START_TEST(test_strongswan_sa_init_response)
{
    ike_message m;
    ike_diag d;
    buf_reader r = buf_reader_make(swan_sa_init_resp, sizeof(swan_sa_init_resp));
    ck_assert_msg(ike_message_parse(r, &m, &d) == 0, "%s", d.text);
    ck_assert_uint_eq(m.hdr.exchange, IKE_EXCH_IKE_SA_INIT);
    ck_assert_uint_eq(m.hdr.flags, IKE_FLAG_RESPONSE);
    ck_assert(m.hdr.spi_r != 0);
    ck_assert_uint_eq(m.chain.n, 9);
    ike_sa_choice c;
    ck_assert_msg(ike_sa_parse_choice(m.chain.pl[0].body, &c, &d) == 0, "%s", d.text);
    ck_assert_uint_eq(c.number, 1);
    ck_assert_uint_eq(c.protocol, IKE_PROTO_IKE);
    ck_assert_uint_eq(c.spi_len, 0);
    ck_assert_uint_eq(c.id[IKE_TT_ENCR], ENCR_AES_GCM_16);
    ck_assert_uint_eq(c.encr_key_bits, 256);
    ck_assert_uint_eq(c.id[IKE_TT_PRF], PRF_HMAC_SHA2_256);
    ck_assert_uint_eq(c.id[IKE_TT_KE], KE_X25519);
    ck_assert(!ike_sa_choice_has(&c, IKE_TT_INTEG));
    ike_notify n;
    ck_assert_int_eq(ike_chain_find_notify(&m.chain, IKE_N_CHILDLESS_IKEV2_SUPPORTED, &n, &d), 0);
    ck_assert_int_eq(ike_chain_find_notify(&m.chain, IKE_N_MULTIPLE_AUTH_SUPPORTED, &n, &d), 0);
    ck_assert_int_eq(ike_chain_find_notify(&m.chain, IKE_N_IKEV2_FRAGMENTATION_SUPPORTED, &n, &d), 0);
    ike_ke k;
    ck_assert_int_eq(ike_ke_parse(m.chain.pl[1].body, &k, &d), 0);
    ck_assert_uint_eq(k.data.len, 32);
}
END_TEST

START_TEST(test_strongswan_ike_auth_4500)
{
    buf_reader r = buf_reader_make(swan_ike_auth_4500, sizeof(swan_ike_auth_4500));
    ck_assert_int_eq(ike_udp_classify(&r), IKE_UDP_IKE);
    ck_assert_uint_eq(r.len, 269);
    ike_message m;
    ike_diag d;
    ck_assert_msg(ike_message_parse(r, &m, &d) == 0, "%s", d.text);
    ck_assert_uint_eq(m.hdr.exchange, IKE_EXCH_IKE_AUTH);
    ck_assert_uint_eq(m.hdr.message_id, 1);
    ck_assert_uint_eq(m.chain.n, 1);
    const ike_payload *sk = &m.chain.pl[0];
    ck_assert_uint_eq(sk->type, IKE_PL_SK);
    ck_assert_uint_eq(sk->next_type, IKE_PL_IDI);
    ck_assert_uint_eq(sk->offset, 28);
    ike_sk_parts parts;
    ck_assert_int_eq(ike_sk_split(sk->body, 8, 16, 1, &parts, &d), 0);
    ck_assert_uint_eq(parts.ct.len, 269 - 28 - 4 - 8 - 16);
    ck_assert_ptr_eq(parts.icv.p + 16, r.p + r.len);
    /* Without the keys the open fails as an integrity failure, no answer. */
    static uint8_t out[512];
    ike_chain inner;
    toy_cipher t;
    ike_sk_cipher c = toy_setup(&t, true, 8, 16, 1);
    ck_assert_int_eq(ike_sk_open(&m, &c, out, sizeof(out), &inner, &d), M2MVPN_E_CRYPTO);
    ck_assert_uint_eq(t.opens, 1);
    ck_assert_uint_eq(d.notify, 0);
}
END_TEST

/* ------------------------------------------------------------------ suite */


/* ------------------------------------------------ MOBIKE notifies (RFC 4555) */

/* A free-standing chain of notifies, parsed back. */
static void mobike_chain(uint8_t *buf, size_t cap, void (*build)(ike_chain_writer *), ike_chain *c)
{
    buf_writer w;
    buf_writer_init(&w, buf, cap);
    ike_chain_writer cw;
    ike_chain_writer_init(&cw, &w, SIZE_MAX);
    build(&cw);
    ike_chain_writer_finish(&cw);
    ck_assert(ike_chain_writer_ok(&cw));
    ike_diag d;
    ck_assert_int_eq(ike_chain_parse(buf_reader_make(buf, buf_writer_len(&w)), cw.first_type, 0, c, &d), 0);
}

static void build_mobike_answer(ike_chain_writer *cw)
{
    static const uint8_t cookie[16] = { 1, 2, 3 }, natd[20] = { 9 };
    ike_mobike_addr a4 = { AF_INET, { 198, 51, 100, 3 } };
    ike_mobike_addr a6 = { AF_INET6, { 0x20, 0x01, 0x0d, 0xb8, [15] = 7 } };
    ike_build_notify(cw, IKE_PROTO_NONE, IKE_N_MOBIKE_SUPPORTED, NULL, 0, NULL, 0);
    ike_build_additional_address(cw, &a4);
    ike_build_additional_address(cw, &a6);
    ike_build_notify(cw, IKE_PROTO_NONE, IKE_N_COOKIE2, NULL, 0, cookie, sizeof(cookie));
    ike_build_notify(cw, IKE_PROTO_NONE, IKE_N_NAT_DETECTION_DESTINATION_IP, NULL, 0, natd, sizeof(natd));
    ike_build_notify(cw, IKE_PROTO_NONE, IKE_N_UPDATE_SA_ADDRESSES, NULL, 0, NULL, 0);
}

START_TEST(test_mobike_round_trip)
{
    uint8_t buf[512];
    ike_chain c;
    mobike_chain(buf, sizeof(buf), build_mobike_answer, &c);
    ike_mobike_info m;
    ike_diag d;
    ck_assert_int_eq(ike_mobike_scan(&c, &m, &d), 0);
    ck_assert(m.supported && m.update && !m.no_additional);
    ck_assert_uint_eq(m.n_addrs, 2);
    ck_assert_int_eq(m.addrs[0].family, AF_INET);
    ck_assert_uint_eq(m.addrs[0].addr[3], 3);
    ck_assert_int_eq(m.addrs[1].family, AF_INET6);
    ck_assert_uint_eq(m.addrs[1].addr[15], 7);
    ck_assert(m.has_cookie2 && m.cookie2.len == 16 && m.cookie2.p[2] == 3);
    ck_assert(m.has_natd_dst && !m.has_natd_src && m.natd_dst[0] == 9);
    ck_assert_uint_eq(m.error, 0);
}
END_TEST

/* Each malformed MOBIKE notify is refused with a reason naming it. */
static const struct {
    uint16_t type;
    size_t len;
    uint8_t first;           /* first data byte */
    const char *says;
} mobike_bad[] = {
    { IKE_N_ADDITIONAL_IP4_ADDRESS, 3, 198, "ADDITIONAL_IP4_ADDRESS: 3 bytes" },
    { IKE_N_ADDITIONAL_IP4_ADDRESS, 16, 198, "ADDITIONAL_IP4_ADDRESS: 16 bytes" },
    { IKE_N_ADDITIONAL_IP6_ADDRESS, 4, 0x20, "ADDITIONAL_IP6_ADDRESS: 4 bytes" },
    { IKE_N_ADDITIONAL_IP4_ADDRESS, 4, 127, "not an address" },
    { IKE_N_ADDITIONAL_IP4_ADDRESS, 4, 224, "not an address" },
    { IKE_N_ADDITIONAL_IP6_ADDRESS, 16, 0xff, "not an address" },
    { IKE_N_ADDITIONAL_IP6_ADDRESS, 16, 0xfe, "not an address" }, /* fe80:: below */
    { IKE_N_COOKIE2, 7, 1, "COOKIE2: 7 bytes" },
    { IKE_N_COOKIE2, 65, 1, "COOKIE2: 65 bytes" },
    { IKE_N_NAT_DETECTION_DESTINATION_IP, 19, 1, "NAT_DETECTION_DESTINATION_IP: 19 bytes" },
    { IKE_N_MOBIKE_SUPPORTED, 1, 1, "MOBIKE_SUPPORTED with 1 bytes" },
    { IKE_N_UPDATE_SA_ADDRESSES, 2, 1, "UPDATE_SA_ADDRESSES with 2 bytes" },
};

START_TEST(test_mobike_malformed)
{
    uint8_t data[80] = { 0 }, buf[256];
    data[0] = mobike_bad[_i].first;
    data[1] = 0x80; /* fe80:: for the link-local case, harmless elsewhere */
    buf_writer w;
    buf_writer_init(&w, buf, sizeof(buf));
    ike_chain_writer cw;
    ike_chain_writer_init(&cw, &w, SIZE_MAX);
    ike_build_notify(&cw, IKE_PROTO_NONE, mobike_bad[_i].type, NULL, 0, data, mobike_bad[_i].len);
    ike_chain_writer_finish(&cw);
    ike_chain c;
    ike_diag d;
    ck_assert_int_eq(ike_chain_parse(buf_reader_make(buf, buf_writer_len(&w)), cw.first_type, 0, &c, &d), 0);
    ike_mobike_info m;
    ike_diag_clear(&d);
    ck_assert_int_eq(ike_mobike_scan(&c, &m, &d), M2MVPN_E_PROTOCOL);
    ck_assert_msg(strstr(d.text, mobike_bad[_i].says), "case %d: %s", _i, d.text);
}
END_TEST

static void build_no_additional_and_list(ike_chain_writer *cw)
{
    ike_mobike_addr a4 = { AF_INET, { 198, 51, 100, 3 } };
    ike_build_notify(cw, IKE_PROTO_NONE, IKE_N_NO_ADDITIONAL_ADDRESSES, NULL, 0, NULL, 0);
    ike_build_additional_address(cw, &a4);
}

static void build_many_addresses_and_errors(ike_chain_writer *cw)
{
    for (int i = 0; i < IKE_MOBIKE_MAX_ADDRS + 3; i++) {
        ike_mobike_addr a = { AF_INET, { 198, 51, 100, (uint8_t)(10 + i) } };
        ike_build_additional_address(cw, &a);
    }
    ike_build_notify(cw, IKE_PROTO_NONE, IKE_N_UNACCEPTABLE_ADDRESSES, NULL, 0, NULL, 0);
}

START_TEST(test_mobike_lists)
{
    uint8_t buf[1024];
    ike_chain c;
    ike_mobike_info m;
    ike_diag d;
    /* "no other address" and a list at once contradict each other */
    mobike_chain(buf, sizeof(buf), build_no_additional_and_list, &c);
    ck_assert_int_eq(ike_mobike_scan(&c, &m, &d), M2MVPN_E_PROTOCOL);
    ck_assert(strstr(d.text, "NO_ADDITIONAL_ADDRESSES") != NULL);
    /* a long list is cut, not refused; the error notify is reported */
    mobike_chain(buf, sizeof(buf), build_many_addresses_and_errors, &c);
    ck_assert_int_eq(ike_mobike_scan(&c, &m, &d), 0);
    ck_assert_uint_eq(m.n_addrs, IKE_MOBIKE_MAX_ADDRS);
    ck_assert_uint_eq(m.n_addrs_skipped, 3);
    ck_assert_uint_eq(m.addrs[0].addr[3], 10);
    ck_assert_uint_eq(m.error, IKE_N_UNACCEPTABLE_ADDRESSES);
}
END_TEST

static Suite *ike_suite(void)
{
    Suite *s = suite_create("ike");
    TCase *tc = tcase_create("codec");
    tcase_add_test(tc, test_names);
    tcase_add_test(tc, test_header_round_trip);
    tcase_add_test(tc, test_header_rules);
    tcase_add_test(tc, test_udp_classify);
    tcase_add_test(tc, test_sa_offer_round_trip);
    tcase_add_test(tc, test_sa_esp_and_choice);
    tcase_add_test(tc, test_sa_malformed);
    tcase_add_test(tc, test_simple_payloads_round_trip);
    tcase_add_test(tc, test_simple_payloads_invalid);
    tcase_add_test(tc, test_ts_round_trip);
    tcase_add_test(tc, test_ts_invalid);
    tcase_add_test(tc, test_cp_round_trip);
    tcase_add_test(tc, test_sa_init_request);
    tcase_add_test(tc, test_truncated_everywhere);
    tcase_add_test(tc, test_unknown_payloads);
    tcase_add_test(tc, test_sk_aead_layout);
    tcase_add_test(tc, test_sk_cbc_layout);
    tcase_add_test(tc, test_sk_padding);
    tcase_add_test(tc, test_sk_wrap_and_empty);
    tcase_add_test(tc, test_sk_must_be_last);
    tcase_add_test(tc, test_frag_in_order);
    tcase_add_test(tc, test_frag_out_of_order_duplicates);
    tcase_add_test(tc, test_frag_inconsistent);
    tcase_add_test(tc, test_frag_total_limit);
    tcase_add_test(tc, test_strongswan_sa_init);
    tcase_add_test(tc, test_strongswan_sa_init_response);
    tcase_add_test(tc, test_strongswan_ike_auth_4500);
    tcase_add_test(tc, test_mobike_round_trip);
    tcase_add_loop_test(tc, test_mobike_malformed, 0, sizeof(mobike_bad) / sizeof(mobike_bad[0]));
    tcase_add_test(tc, test_mobike_lists);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(ike_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
