/* SPDX-License-Identifier: Apache-2.0 */
/* IKE_AUTH (RFC 7296 §1.2, §2.15): our identity and AUTH, the first CHILD SA,
 * the configuration request; then the gateway's AUTH, verified before
 * anything else of its answer is used. */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/secmem.h"
#include "sa_internal.h"

#define PSK_PAD "Key Pad for IKEv2"

/* ID payload body as it is signed: type, three reserved bytes, data. */
static size_t id_body(const pki_id *id, uint8_t *out, size_t cap)
{
    if (cap < 4 + id->len)
        return 0;
    out[0] = (uint8_t)id->type;
    out[1] = out[2] = out[3] = 0;
    memcpy(out + 4, id->data, id->len);
    return 4 + id->len;
}

int ike_auth_octets(ike_sa *sa, bool ours, const uint8_t *idb, size_t id_len,
                    uint8_t **ret, size_t *ret_len)
{
    const uint8_t *msg = ours ? sa->init_req : sa->init_resp;
    size_t msg_len = ours ? sa->init_req_len : sa->init_resp_len;
    const uint8_t *nonce = ours ? sa->nonce_r : sa->nonce_i;
    size_t nonce_len = ours ? sa->nonce_r_len : sizeof(sa->nonce_i);
    const crypto_key *skp = ours ? &sa->keys->sk_pi : &sa->keys->sk_pr;
    size_t mac_len = crypto_prf_len(sa->suite.prf_id);
    size_t len = msg_len + nonce_len + mac_len;
    uint8_t *o = malloc(len);
    if (!o)
        return M2MVPN_E_NOMEM;
    memcpy(o, msg, msg_len);
    memcpy(o + msg_len, nonce, nonce_len);
    crypto_span id = { idb, id_len };
    int r = crypto_prf_oneshot(sa->suite.prf_id, skp->b, skp->len, &id, 1, o + msg_len + nonce_len, mac_len);
    if (r < 0) {
        free(o);
        return r;
    }
    *ret = o;
    *ret_len = len;
    return 0;
}

/* AUTH = prf(prf(Shared Secret, "Key Pad for IKEv2"), <octets>) (RFC 7296 §2.15). */
static int psk_auth(ike_sa *sa, const uint8_t *octets, size_t len, uint8_t *out, size_t cap)
{
    const char *psk = sa->cfg.prof->psk;
    uint8_t key[CRYPTO_MAX_PRF_LEN];
    crypto_span pad = { (const uint8_t *)PSK_PAD, strlen(PSK_PAD) };
    int r = crypto_prf_oneshot(sa->suite.prf_id, (const uint8_t *)psk, strlen(psk), &pad, 1, key, sizeof(key));
    if (r == 0) {
        crypto_span o = { octets, len };
        r = crypto_prf_oneshot(sa->suite.prf_id, key, crypto_prf_len(sa->suite.prf_id), &o, 1, out, cap);
    }
    secure_wipe(key, sizeof(key));
    return r;
}

static int our_id(ike_sa *sa, pki_id *id, char *err, size_t err_len)
{
    const profile *p = sa->cfg.prof;
    if (p->local_id)
        return pki_id_from_string(p->local_id, id, err, err_len);
    if (p->auth == PROFILE_AUTH_CERT && sa->cfg.cred) {
        pki_cert *const *chain;
        size_t n;
        int r = cred_chain(sa->cfg.cred, &chain, &n, err, err_len);
        if (r < 0)
            return r;
        return pki_id_from_cert_subject(chain[0], id);
    }
    snprintf(err, err_len, "local_id is required for %s authentication", profile_auth_name(p->auth));
    return M2MVPN_E_PROFILE;
}

/* Does the profile's tunnel.remote_ts hold a prefix of `family`? */
static bool protects_family(const profile *p, int family)
{
    for (size_t i = 0; i < p->tunnel.n_remote_ts; i++)
        if (p->tunnel.remote_ts[i].family == family)
            return true;
    return false;
}

void ike_build_ts_list(ike_ts *out, size_t *n, const profile_ts *ts, size_t n_ts)
{
    *n = 0;
    for (size_t i = 0; i < n_ts && *n < IKE_MAX_TS; i++)
        if (ike_ts_from_prefix(ts[i].addr, ts[i].family == AF_INET6 ? 16 : 4, ts[i].prefix_len, 0, 0,
                               65535, &out[*n]) == 0)
            (*n)++;
}

/* The TSi we propose: anything of each family we ask a virtual IP for (the
 * gateway narrows it to what it assigned), else our own address. The
 * gateway may only narrow it. */
static size_t our_tsi(const ike_sa *sa, profile_ts *out)
{
    const profile *p = sa->cfg.prof;
    size_t n = 0;
    if (p->tunnel.request_vip) {
        static const int families[] = { AF_INET, AF_INET6 };
        for (size_t i = 0; i < 2; i++) {
            if (!protects_family(p, families[i]))
                continue;
            memset(&out[n], 0, sizeof(out[n]));
            out[n++].family = families[i];
        }
        return n;
    }
    memset(out, 0, sizeof(*out));
    if (sa->cfg.local.ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&sa->cfg.local;
        out->family = AF_INET6;
        out->prefix_len = 128;
        memcpy(out->addr, &in6->sin6_addr, 16);
    } else {
        const struct sockaddr_in *in = (const struct sockaddr_in *)&sa->cfg.local;
        out->family = AF_INET;
        out->prefix_len = 32;
        memcpy(out->addr, &in->sin_addr, 4);
    }
    return 1;
}

int ike_auth_choose(const ike_sa *sa, pki_key_type kt, const uint16_t *peer_hashes, size_t n_peer_hashes,
                    pki_auth_method *method, pki_sig_scheme *scheme, ike_fault *fault, char *err, size_t err_len)
{
    bool sha1 = sa->cfg.prof->ike.allow_sha1_signatures;
    int r = pki_choose_auth(kt, peer_hashes, n_peer_hashes, false, sha1, method, scheme);
    if (r == 0)
        return 0;
    /* Our key, or what the gateway announced (unauthenticated)? */
    const uint16_t *ours;
    size_t n_ours = pki_hash_algs_supported(&ours);
    pki_auth_method m;
    pki_sig_scheme sc;
    if (pki_choose_auth(kt, ours, n_ours, false, sha1, &m, &sc) < 0) {
        *fault = IKE_FAULT_LOCAL;
        snprintf(err, err_len, "our key type %s cannot sign IKEv2 AUTH", pki_key_type_name(kt));
    } else if (kt == PKI_KEY_RSA && !sha1) {
        *fault = IKE_FAULT_PEER;
        snprintf(err, err_len, "gateway %s offers no acceptable signature hash for our RSA key "
                 "(no SHA-2 in SIGNATURE_HASH_ALGORITHMS, RFC 7427), and RSA without one means "
                 "SHA-1; set ike.allow_sha1_signatures to true to allow SHA-1 with this gateway", sa->gw_text);
    } else {
        *fault = IKE_FAULT_PEER;
        snprintf(err, err_len, "gateway %s announced no signature hash (SIGNATURE_HASH_ALGORITHMS, RFC 7427) "
                 "our %s key can sign with", sa->gw_text, pki_key_type_name(kt));
    }
    return r;
}

/* CERT payloads of our chain, and the AUTH method our key can use with
 * the hashes the gateway announced. */
static int build_certs(ike_sa *sa, ike_chain_writer *cw, pki_auth_method *method, pki_sig_scheme *scheme,
                       ike_fault *fault, char *err, size_t err_len)
{
    pki_cert *const *chain;
    size_t n;
    pki_key_type kt;
    unsigned bits;
    int r;
    if ((r = cred_chain(sa->cfg.cred, &chain, &n, err, err_len)) < 0 ||
        (r = cred_key_info(sa->cfg.cred, &kt, &bits, err, err_len)) < 0)
        return r;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *der;
        size_t der_len;
        pki_cert_der(chain[i], &der, &der_len);
        ike_build_cert(cw, IKE_CERT_X509_SIGNATURE, der, der_len);
    }
    r = ike_auth_choose(sa, kt, sa->peer_hashes, sa->n_peer_hashes, method, scheme, fault, err, err_len);
    if (r == 0 && *method == PKI_AUTH_RSA_SIG)
        LOG_WARN(sa->log, "ike", "signing our AUTH with RSA SHA-1 for %s (ike.allow_sha1_signatures)", sa->gw_text);
    return r;
}

static void build_certreq(ike_sa *sa, ike_chain_writer *cw)
{
    if (!sa->cfg.trust || pki_trust_count(sa->cfg.trust) == 0)
        return;
    /* One hash per anchor: a "ca" file may be a whole bundle. */
    size_t cap = PKI_SHA1_LEN * pki_trust_count(sa->cfg.trust), hl = 0;
    uint8_t *hashes = malloc(cap);
    if (hashes && pki_trust_certreq(sa->cfg.trust, hashes, cap, &hl) == 0)
        ike_build_certreq(cw, IKE_CERT_X509_SIGNATURE, hashes, hl / PKI_SHA1_LEN);
    else
        LOG_WARN(sa->log, "ike", "no CERTREQ sent (out of memory): the gateway may not send its certificate");
    free(hashes);
}

/* Our AUTH payload over our ID body (RFC 7296 §2.15). */
static int build_our_auth(ike_sa *sa, ike_chain_writer *cw, const uint8_t *idb, size_t idb_len,
                          pki_auth_method method, pki_sig_scheme scheme, char *err, size_t err_len)
{
    uint8_t *octets = NULL, auth[PKI_AUTH_MAX];
    size_t octets_len = 0, auth_len = 0;
    int r = ike_auth_octets(sa, true, idb, idb_len, &octets, &octets_len);
    if (r < 0) {
        snprintf(err, err_len, "cannot compute AUTH octets");
        return r;
    }
    if (method == PKI_AUTH_SHARED_KEY) {
        auth_len = crypto_prf_len(sa->suite.prf_id);
        r = psk_auth(sa, octets, octets_len, auth, sizeof(auth));
        if (r < 0)
            snprintf(err, err_len, "PSK AUTH computation failed");
    } else {
        r = cred_sign_auth(sa->cfg.cred, method, scheme, octets, octets_len, auth, sizeof(auth), &auth_len, err,
                           err_len);
    }
    free(octets);
    if (r == 0)
        ike_build_auth(cw, (uint8_t)method, auth, auth_len);
    secure_wipe(auth, sizeof(auth));
    return r;
}

/* The CHILD SA part: CP (virtual IPs and DNS servers of each family the
 * profile protects: both for a dual-stack tunnel; the gateway assigns what
 * its pools have), SA, TSi, TSr. */
static void build_child_request(ike_sa *sa, ike_chain_writer *cw)
{
    const profile *p = sa->cfg.prof;
    bool want4 = protects_family(p, AF_INET), want6 = protects_family(p, AF_INET6);
    if (p->tunnel.request_vip) {
        ike_cp_attr attrs[4];
        size_t n_attrs = 0;
        /* A reauthentication asks for the addresses the tunnel has. */
        uint8_t v6[17];
        memcpy(v6, sa->cfg.vip6, 16);
        v6[16] = 128;
        if (want4)
            attrs[n_attrs++] = (ike_cp_attr){ IKE_CP_INTERNAL_IP4_ADDRESS,
                                              sa->cfg.want_vip ? buf_reader_make(sa->cfg.vip, 4)
                                                               : buf_reader_make(NULL, 0) };
        if (want6)
            attrs[n_attrs++] = (ike_cp_attr){ IKE_CP_INTERNAL_IP6_ADDRESS,
                                              sa->cfg.want_vip6 ? buf_reader_make(v6, 17)
                                                                : buf_reader_make(NULL, 0) };
        if (want4 && p->tunnel.dns)
            attrs[n_attrs++] = (ike_cp_attr){ IKE_CP_INTERNAL_IP4_DNS, buf_reader_make(NULL, 0) };
        if (want6 && p->tunnel.dns)
            attrs[n_attrs++] = (ike_cp_attr){ IKE_CP_INTERNAL_IP6_DNS, buf_reader_make(NULL, 0) };
        ike_build_cp(cw, IKE_CFG_REQUEST, attrs, n_attrs);
    }
    uint8_t spi[4];
    buf_store_be32(spi, sa->child_spi_in);
    ike_build_sa(cw, p->esp.proposals, p->esp.n_proposals, IKE_PROTO_ESP, spi, 4);
    ike_ts tsi[IKE_MAX_TS], tsr[IKE_MAX_TS];
    size_t n_tsi = 0, n_tsr = 0;
    profile_ts proposed[PROFILE_MAX_TS];
    ike_build_ts_list(tsi, &n_tsi, proposed, our_tsi(sa, proposed));
    ike_build_ts_list(tsr, &n_tsr, p->tunnel.remote_ts, p->tunnel.n_remote_ts);
    ike_build_ts(cw, IKE_PL_TSI, tsi, n_tsi);
    ike_build_ts(cw, IKE_PL_TSR, tsr, n_tsr);
}

/* The first IKE_AUTH request (RFC 7296 §1.2; with EAP, §2.16, no AUTH yet:
 * the gateway proves itself first). */
static ike_task_status auth_build(ike_sa *sa)
{
    const profile *p = sa->cfg.prof;
    char err[256];
    pki_id id;
    int r = our_id(sa, &id, err, sizeof(err));
    uint8_t idb[4 + PKI_ID_MAX];
    size_t idb_len = r < 0 ? 0 : id_body(&id, idb, sizeof(idb));
    bool eap = p->auth == PROFILE_AUTH_EAP;
    if (r == 0 && eap)
        r = ike_eap_begin(sa, idb, idb_len, err, sizeof(err)); /* no password: ours to give */
    if (r < 0) {
        ike_sa_fail_local(sa, r, "%s", err);
        return IKE_TASK_FAILED;
    }
    size_t cap = IKE_MSG_MAX;
    uint8_t *inner = malloc(cap);
    if (!inner) {
        ike_sa_fail(sa, M2MVPN_E_NOMEM, "out of memory");
        return IKE_TASK_FAILED;
    }
    buf_writer w;
    buf_writer_init(&w, inner, cap);
    ike_chain_writer cw;
    ike_chain_writer_init(&cw, &w, SIZE_MAX);
    ike_build_id(&cw, IKE_PL_IDI, (uint8_t)id.type, id.data, id.len);
    pki_auth_method method = PKI_AUTH_SHARED_KEY;
    pki_sig_scheme scheme = PKI_SIG_NONE;
    ike_fault fault = IKE_FAULT_LOCAL; /* of a failure below */
    if (p->auth == PROFILE_AUTH_CERT)
        r = build_certs(sa, &cw, &method, &scheme, &fault, err, sizeof(err));
    if (r == 0) {
        build_certreq(sa, &cw);
        if (!sa->cfg.reauth) /* the old IKE SA must live until this one carries traffic */
            ike_build_notify(&cw, IKE_PROTO_NONE, IKE_N_INITIAL_CONTACT, NULL, 0, NULL, 0);
        ike_mobike_build_auth(sa, &cw);
        pki_id rid;
        if (pki_id_from_string(p->remote_id, &rid, err, sizeof(err)) == 0)
            ike_build_id(&cw, IKE_PL_IDR, (uint8_t)rid.type, rid.data, rid.len);
        if (!eap)
            r = build_our_auth(sa, &cw, idb, idb_len, method, scheme, err, sizeof(err));
    }
    if (r == 0) {
        build_child_request(sa, &cw);
        ike_chain_writer_finish(&cw);
        if (!ike_chain_writer_ok(&cw)) {
            r = M2MVPN_E_INVAL;
            snprintf(err, sizeof(err), "IKE_AUTH request does not fit %zu bytes", cap);
        }
    }
    if (r < 0) {
        secure_free(inner, cap);
        (fault == IKE_FAULT_PEER ? ike_sa_fail : ike_sa_fail_local)(sa, r, "%s", err);
        return IKE_TASK_FAILED;
    }
    LOG_INFO(sa->log, "ike", "sending IKE_AUTH to %s (%s authentication)", sa->gw_text,
             eap ? "EAP" : method == PKI_AUTH_SHARED_KEY ? "PSK" : pki_sig_scheme_name(scheme));
    ike_sa_set_state(sa, IKE_SA_AUTH_SENT);
    r = ike_sa_send_protected(sa, IKE_EXCH_IKE_AUTH, false, sa->next_msg_id, inner, buf_writer_len(&w),
                              cw.first_type, IKE_TASK_AUTH);
    secure_free(inner, cap);
    if (r < 0)
        ike_sa_fail_local(sa, r, "cannot send IKE_AUTH: %s", core_strerror(r));
    return r < 0 ? IKE_TASK_FAILED : IKE_TASK_NEED_MORE;
}

/* ------------------------------------------------------------ response */

static int verify_psk(ike_sa *sa, const ike_auth *a, const uint8_t *octets, size_t len, char *err, size_t err_len)
{
    if (sa->cfg.prof->auth != PROFILE_AUTH_PSK) {
        snprintf(err, err_len, "gateway authenticated with a PSK, but the profile expects a certificate");
        return M2MVPN_E_AUTH_PEER;
    }
    uint8_t want[CRYPTO_MAX_PRF_LEN];
    size_t n = crypto_prf_len(sa->suite.prf_id);
    int r = psk_auth(sa, octets, len, want, sizeof(want));
    bool ok = r == 0 && a->data.len == n && crypto_memeq(want, a->data.p, n);
    secure_wipe(want, sizeof(want));
    if (!ok) {
        snprintf(err, err_len, "gateway's PSK AUTH does not verify (different pre-shared key?)");
        return M2MVPN_E_AUTH_PEER;
    }
    return 0;
}

static int verify_signature(ike_sa *sa, const ike_chain *c, const ike_auth *a, const pki_id *rid,
                            const uint8_t *octets, size_t len, char *err, size_t err_len)
{
    pki_cert *certs[8];
    size_t n = 0;
    ike_diag d;
    int r = 0;
    if (a->method == PKI_AUTH_RSA_SIG && !sa->cfg.prof->ike.allow_sha1_signatures) {
        snprintf(err, err_len, "gateway signed its AUTH with RSA PKCS#1 SHA-1 (method 1), which is refused; "
                 "set ike.allow_sha1_signatures to true to accept it from this gateway");
        return M2MVPN_E_AUTH_PEER;
    }
    for (const ike_payload *pl = ike_chain_find(c, IKE_PL_CERT, NULL); pl && n < 8;
         pl = ike_chain_find(c, IKE_PL_CERT, pl)) {
        ike_cert cert;
        if (ike_cert_parse(pl->body, &cert, &d) < 0 || cert.encoding != IKE_CERT_X509_SIGNATURE)
            continue;
        if ((r = pki_cert_from_der(cert.data.p, cert.data.len, &certs[n], err, err_len)) < 0)
            goto out;
        n++;
    }
    if (n == 0) {
        snprintf(err, err_len, "gateway sent no certificate");
        r = M2MVPN_E_AUTH_PEER;
        goto out;
    }
    if (!sa->cfg.trust || pki_trust_count(sa->cfg.trust) == 0) {
        snprintf(err, err_len, "no trust anchors to verify the gateway's certificate (profile \"ca\")");
        r = M2MVPN_E_AUTH_PEER;
        goto out;
    }
    if ((r = pki_verify_chain(sa->cfg.trust, certs[0], certs + 1, n - 1, 0, err, err_len)) < 0)
        goto out;
    if (!pki_cert_matches_id(certs[0], rid)) {
        char subj[256], want[256];
        pki_cert_subject_text(certs[0], subj, sizeof(subj));
        pki_id_to_string(rid, want, sizeof(want));
        snprintf(err, err_len, "gateway certificate %s does not carry the identity %s", subj, want);
        r = M2MVPN_E_AUTH_PEER;
        goto out;
    }
    r = pki_auth_verify(certs[0], a->method, a->data.p, a->data.len, octets, len, NULL, err, err_len);
    if (r < 0 && r != M2MVPN_E_AUTH_PEER)
        r = M2MVPN_E_AUTH_PEER;
    if (r == 0 && a->method == PKI_AUTH_RSA_SIG)
        LOG_WARN(sa->log, "ike", "gateway %s authenticated with RSA SHA-1 (ike.allow_sha1_signatures)",
                 sa->gw_text);
out:
    for (size_t i = 0; i < n; i++)
        pki_cert_free(certs[i]);
    return r;
}

/* The gateway's identity and AUTH. 0 when it is who the profile says. */
int ike_auth_verify_gateway(ike_sa *sa, const ike_chain *c, char *err, size_t err_len)
{
    ike_diag d;
    ike_diag_clear(&d);
    const ike_payload *idr_pl = ike_chain_find(c, IKE_PL_IDR, NULL);
    const ike_payload *auth_pl = ike_chain_find(c, IKE_PL_AUTH, NULL);
    ike_id idr;
    ike_auth a;
    if (!idr_pl || !auth_pl || ike_id_parse(idr_pl->body, &idr, &d) < 0 || ike_auth_parse(auth_pl->body, &a, &d) < 0) {
        snprintf(err, err_len, "IKE_AUTH response without valid IDr and AUTH %s", d.text);
        return M2MVPN_E_PROTOCOL;
    }
    pki_id got, want;
    int r = pki_id_from_payload(idr.type, idr.data.p, idr.data.len, &got, err, err_len);
    if (r < 0)
        return r == M2MVPN_E_NOTSUPP ? M2MVPN_E_AUTH_PEER : r;
    if ((r = pki_id_from_string(sa->cfg.prof->remote_id, &want, err, err_len)) < 0)
        return M2MVPN_E_PROFILE;
    if (!pki_id_equal(&got, &want)) {
        char g[256];
        pki_id_to_string(&got, g, sizeof(g));
        snprintf(err, err_len, "gateway identified itself as '%s', the profile expects '%s'", g,
                 sa->cfg.prof->remote_id);
        return M2MVPN_E_AUTH_PEER;
    }
    uint8_t *octets;
    size_t len;
    if ((r = ike_auth_octets(sa, false, idr_pl->body.p, idr_pl->body.len, &octets, &len)) < 0) {
        snprintf(err, err_len, "cannot compute AUTH octets");
        return r;
    }
    if (a.method == PKI_AUTH_SHARED_KEY)
        r = verify_psk(sa, &a, octets, len, err, err_len);
    else
        r = verify_signature(sa, c, &a, &want, octets, len, err, err_len);
    free(octets);
    return r;
}

static const struct {
    uint16_t notify;
    int err;
    const char *what;
} child_errors[] = {
    { IKE_N_NO_PROPOSAL_CHOSEN, M2MVPN_E_NO_PROPOSAL, "accepted none of our ESP proposals" },
    { IKE_N_TS_UNACCEPTABLE, M2MVPN_E_TS_UNACCEPTABLE, "refused our traffic selectors" },
    { IKE_N_INTERNAL_ADDRESS_FAILURE, M2MVPN_E_PROTOCOL, "could not assign a virtual IP" },
    { IKE_N_FAILED_CP_REQUIRED, M2MVPN_E_PROTOCOL, "requires a configuration request" },
    { IKE_N_SINGLE_PAIR_REQUIRED, M2MVPN_E_TS_UNACCEPTABLE, "requires a single pair of selectors" },
};

/* Is the gateway's selector inside one of the prefixes we proposed? A
 * gateway may narrow TSr (RFC 7296 §2.9), never widen it: a wider one would
 * pull traffic into the tunnel that the profile does not send there. */
static bool ts_within(const ike_ts *got, const profile_ts *ts, size_t n_ts)
{
    size_t n = ike_ts_addr_len(got);
    for (size_t i = 0; i < n_ts; i++) {
        const profile_ts *t = &ts[i];
        ike_ts mine;
        if ((t->family == AF_INET6) != (n == 16) ||
            ike_ts_from_prefix(t->addr, n, t->prefix_len, 0, 0, 65535, &mine) < 0)
            continue;
        if (memcmp(got->addr_start, mine.addr_start, n) >= 0 && memcmp(got->addr_end, mine.addr_end, n) <= 0)
            return true;
    }
    return false;
}

/* The gateway's answer to one of our selector lists (RFC 7296 §2.9): every
 * entry within what we proposed (it may only narrow), and each a prefix (the
 * datapath filters and routes by prefix: a range we skipped would leave the
 * inbound filter wider than granted). Into out[] as prefixes. */
static int granted_ts(const ike_sa *sa, const ike_ts_list *got, const char *which, const profile_ts *proposed,
                      size_t n_proposed, profile_ts *out, size_t *n_out, char *err, size_t err_len)
{
    *n_out = 0;
    for (size_t i = 0; i < got->n; i++) {
        const ike_ts *t = &got->ts[i];
        int fam = t->type == IKE_TS_IPV6_ADDR_RANGE ? AF_INET6 : AF_INET;
        unsigned plen;
        if (!ts_within(t, proposed, n_proposed) || *n_out >= PROFILE_MAX_TS ||
            ike_ts_to_prefix(t, out[*n_out].addr, &plen) < 0) {
            char a[INET6_ADDRSTRLEN], b[INET6_ADDRSTRLEN];
            inet_ntop(fam, t->addr_start, a, sizeof(a));
            inet_ntop(fam, t->addr_end, b, sizeof(b));
            snprintf(err, err_len, "gateway %s answered with %s %s-%s, %s", sa->gw_text, which, a, b,
                     *n_out >= PROFILE_MAX_TS ? "more selectors than we can filter"
                     : !ts_within(t, proposed, n_proposed) ? "outside what we proposed"
                                                           : "not a prefix");
            return M2MVPN_E_TS_UNACCEPTABLE;
        }
        out[*n_out].family = fam;
        out[*n_out].prefix_len = (uint8_t)plen;
        (*n_out)++;
    }
    if (*n_out == 0) {
        snprintf(err, err_len, "gateway %s answered with no %s", sa->gw_text, which);
        return M2MVPN_E_TS_UNACCEPTABLE;
    }
    return 0;
}

/* An error notify instead of the CHILD SA: its error code and why, else 0. */
static int child_refused(ike_sa *sa, const ike_chain *c, char *err, size_t err_len)
{
    const profile *p = sa->cfg.prof;
    ike_diag d;
    ike_diag_clear(&d);
    ike_notify n;
    for (size_t i = 0; i < sizeof(child_errors) / sizeof(child_errors[0]); i++) {
        if (ike_chain_find_notify(c, child_errors[i].notify, &n, &d) == 0) {
            char ours[512] = "";
            if (child_errors[i].notify == IKE_N_NO_PROPOSAL_CHOSEN)
                for (size_t k = 0, used = 0; k < p->esp.n_proposals && used + 2 < sizeof(ours); k++) {
                    char one[256];
                    proposal_format(&p->esp.proposals[k], PROPOSAL_ESP, one, sizeof(one));
                    used += (size_t)snprintf(ours + used, sizeof(ours) - used, "%s%s", k ? ", " : "", one);
                }
            snprintf(err, err_len, "gateway %s %s (%s)%s%s", sa->gw_text, child_errors[i].what,
                     ike_notify_name(child_errors[i].notify), ours[0] ? "; ours: " : "", ours);
            return child_errors[i].err;
        }
    }
    return 0;
}

/* The virtual IPs and DNS servers of a CP(CFG_REPLY). */
static void take_cp(const ike_chain *c, ike_child_result *res)
{
    const ike_payload *cp_pl = ike_chain_find(c, IKE_PL_CP, NULL);
    ike_cp cp;
    ike_diag d;
    if (!cp_pl || ike_cp_parse(cp_pl->body, &cp, &d) < 0 || cp.cfg_type != IKE_CFG_REPLY)
        return;
    const ike_cp_attr *a = ike_cp_find(&cp, IKE_CP_INTERNAL_IP4_ADDRESS, NULL);
    if (a && a->value.len == 4) {
        memcpy(res->vip, a->value.p, 4);
        res->has_vip = true;
    }
    for (a = ike_cp_find(&cp, IKE_CP_INTERNAL_IP4_DNS, NULL); a && res->n_dns < IKE_MAX_DNS;
         a = ike_cp_find(&cp, IKE_CP_INTERNAL_IP4_DNS, a))
        if (a->value.len == 4)
            memcpy(res->dns[res->n_dns++], a->value.p, 4);
    /* Address and prefix length (RFC 7296 §3.15.1); a prefix length of
     * 0 or above 128 is no usable assignment. */
    a = ike_cp_find(&cp, IKE_CP_INTERNAL_IP6_ADDRESS, NULL);
    if (a && a->value.len == 17 && a->value.p[16] >= 1 && a->value.p[16] <= 128) {
        memcpy(res->vip6, a->value.p, 16);
        res->vip6_prefix_len = a->value.p[16];
        res->has_vip6 = true;
    }
    for (a = ike_cp_find(&cp, IKE_CP_INTERNAL_IP6_DNS, NULL); a && res->n_dns6 < IKE_MAX_DNS;
         a = ike_cp_find(&cp, IKE_CP_INTERNAL_IP6_DNS, a))
        if (a->value.len == 16)
            memcpy(res->dns6[res->n_dns6++], a->value.p, 16);
}

int ike_child_from_answer(ike_sa *sa, const ike_chain *c, const uint8_t *ni, size_t ni_len,
                          const uint8_t *nr, size_t nr_len, const uint8_t *g_ir, size_t g_ir_len,
                          bool need_cp, uint32_t spi_in, ike_child_result *res,
                          crypto_child_keys **keys, char *err, size_t err_len)
{
    const profile *p = sa->cfg.prof;
    ike_diag d;
    ike_diag_clear(&d);
    ike_notify n;
    int r = child_refused(sa, c, err, err_len);
    if (r < 0)
        return r;
    const ike_payload *sa_pl = ike_chain_find(c, IKE_PL_SA, NULL);
    const ike_payload *tsr_pl = ike_chain_find(c, IKE_PL_TSR, NULL);
    ike_sa_choice ch;
    ike_ts_list tsr;
    if (!sa_pl || !tsr_pl || ike_sa_parse_choice(sa_pl->body, &ch, &d) < 0 || ike_ts_parse(tsr_pl->body, &tsr, &d) < 0) {
        snprintf(err, err_len, "answer from %s without a valid CHILD SA %s", sa->gw_text, d.text);
        return M2MVPN_E_PROTOCOL;
    }
    if (ch.protocol != IKE_PROTO_ESP || ch.spi_len != 4 || buf_load_be32(ch.spi) < 256 ||
        !ike_choice_offered(&ch, p->esp.proposals, p->esp.n_proposals, false) ||
        /* A rekey without our KE must not get a group (with one: the caller checks it). */
        (!need_cp && !g_ir_len && ike_sa_choice_has(&ch, IKE_TT_KE) && ch.id[IKE_TT_KE] != 0)) {
        snprintf(err, err_len, "gateway %s chose an ESP proposal we did not offer", sa->gw_text);
        return M2MVPN_E_PROTOCOL;
    }
    if (ike_chain_find_notify(c, IKE_N_USE_TRANSPORT_MODE, &n, &d) == 0) {
        snprintf(err, err_len, "gateway %s wants transport mode; only tunnel mode is supported", sa->gw_text);
        return M2MVPN_E_PROTOCOL;
    }
    memset(res, 0, sizeof(*res));
    res->spi_in = spi_in;
    res->spi_out = buf_load_be32(ch.spi);
    res->encr_id = ch.id[IKE_TT_ENCR];
    res->encr_key_bits = ch.encr_key_bits ? ch.encr_key_bits : 256;
    res->integ_id = ike_sa_choice_has(&ch, IKE_TT_INTEG) ? ch.id[IKE_TT_INTEG] : 0;
    res->esn = ike_sa_choice_has(&ch, IKE_TT_ESN) && ch.id[IKE_TT_ESN] == ESN_YES;
    res->natt = sa->natt;
    snprintf(sa->esp_alg, sizeof(sa->esp_alg), "%s%s%s%s", proposal_encr_name(res->encr_id, res->encr_key_bits),
             res->integ_id ? "-" : "", res->integ_id ? proposal_integ_name(res->integ_id) : "",
             res->esn ? "-esn" : "");
    /* TSr within the profile's remote_ts; TSi within what we proposed:
     * where the gateway may send to (the datapath's inbound filter). */
    const ike_payload *tsi_pl = ike_chain_find(c, IKE_PL_TSI, NULL);
    ike_ts_list tsi;
    if (!tsi_pl || ike_ts_parse(tsi_pl->body, &tsi, &d) < 0) {
        snprintf(err, err_len, "answer from %s without a valid TSi %s", sa->gw_text, d.text);
        return M2MVPN_E_PROTOCOL;
    }
    profile_ts proposed[PROFILE_MAX_TS];
    size_t n_proposed = our_tsi(sa, proposed);
    r = granted_ts(sa, &tsr, "traffic selector (TSr) for the profile's tunnel.remote_ts", p->tunnel.remote_ts,
                       p->tunnel.n_remote_ts, res->remote_ts, &res->n_remote_ts, err, err_len);
    if (r == 0)
        r = granted_ts(sa, &tsi, "traffic selector (TSi) for our side", proposed, n_proposed, res->local_ts,
                       &res->n_local_ts, err, err_len);
    if (r < 0)
        return r;
    /* Kept for rekeying (RFC 7296 §2.8: the same selectors). */
    sa->n_child_tsr = 0;
    for (size_t i = 0; i < tsr.n && sa->n_child_tsr < IKE_MAX_TS; i++)
        sa->child_tsr[sa->n_child_tsr++] = tsr.ts[i];
    sa->n_child_tsi = 0;
    for (size_t i = 0; i < tsi.n && sa->n_child_tsi < IKE_MAX_TS; i++)
        sa->child_tsi[sa->n_child_tsi++] = tsi.ts[i];
    if (need_cp)
        take_cp(c, res);
    if (need_cp && p->tunnel.request_vip && !res->has_vip && !res->has_vip6) {
        snprintf(err, err_len, "gateway %s assigned no virtual IP (check its address pool)", sa->gw_text);
        return M2MVPN_E_PROTOCOL;
    }
    crypto_suite cs = { res->encr_id, res->encr_key_bits, res->integ_id, sa->suite.prf_id };
    r = crypto_child_keys_derive(&cs, &sa->keys->sk_d, g_ir, g_ir_len, ni, ni_len, nr, nr_len, keys);
    if (r < 0) {
        snprintf(err, err_len, "deriving CHILD SA keys failed");
        return r;
    }
    return 0;
}

size_t ike_child_keymat(const crypto_child_keys *keys, bool we_initiated, uint8_t *out, size_t cap)
{
    const crypto_key *parts[4] = { &keys->encr_i, &keys->integ_i, &keys->encr_r, &keys->integ_r };
    size_t n = 0;
    for (int k = 0; k < 4; k++) {
        const crypto_key *part = parts[we_initiated ? k : (k + 2) % 4];
        if (n + part->len > cap)
            return 0;
        memcpy(out + n, part->b, part->len);
        n += part->len;
    }
    return n;
}

static void auth_answer(ike_sa *sa, const ike_chain *c)
{
    char err[512];
    ike_diag d;
    ike_notify n;
    if (ike_chain_find_notify(c, IKE_N_AUTHENTICATION_FAILED, &n, &d) == 0) {
        /* During EAP, once the gateway has proved itself by its certificate,
         * its refusal is about our credentials: a local cause, not retried
         * with the same password. Before that, anyone in the path could have
         * sent it; after EAP-Success the gateway accepted the password and
         * refuses its own protocol step: both the gateway's fault, retried. */
        bool eap = sa->cfg.prof->auth == PROFILE_AUTH_EAP;
        if (eap && sa->eap_phase == IKE_EAP_PHASE_AUTH) {
            ike_eap_end(sa);
            ike_sa_fail(sa, M2MVPN_E_AUTH_PEER, "gateway %s sent AUTHENTICATION_FAILED after EAP-Success "
                        "(it accepted the credentials): its fault, tried again", sa->gw_text);
            return;
        }
        bool ours = eap && sa->eap_phase == IKE_EAP_PHASE_EAP;
        (ours ? ike_sa_fail_local : ike_sa_fail)(sa, M2MVPN_E_AUTH_LOCAL,
                    "gateway %s rejected our authentication (AUTHENTICATION_FAILED): check the "
                    "credentials and identity '%s'", sa->gw_text,
                    sa->cfg.prof->local_id ? sa->cfg.prof->local_id : "(certificate subject)");
        return;
    }
    if (sa->cfg.prof->auth == PROFILE_AUTH_EAP) {
        ike_eap_process(sa, c);
        return;
    }
    int r = ike_auth_verify_gateway(sa, c, err, sizeof(err));
    if (r < 0) {
        /* Tell the gateway (RFC 7296 §2.21.2) so it drops its half at once. */
        ike_info_send_final(sa, true);
        ike_sa_fail(sa, r == M2MVPN_E_PROTOCOL ? r : M2MVPN_E_AUTH_PEER,
                    "gateway %s could not be authenticated: %s", sa->gw_text, err);
        return;
    }
    ike_auth_establish(sa, c);
}

/* NEED_MORE while EAP rounds go on (auth_eap.c sends the next request). */
static ike_task_status auth_process(ike_sa *sa, const ike_message *msg, const ike_chain *c)
{
    (void)msg;
    auth_answer(sa, c);
    if (sa->state == IKE_SA_DOWN)
        return IKE_TASK_FAILED;
    return sa->req.task == IKE_TASK_AUTH ? IKE_TASK_NEED_MORE : IKE_TASK_DONE;
}

const ike_task_ops ike_task_auth = {
    .kind = IKE_TASK_AUTH,
    .build = auth_build,
    .process = auth_process,
};

void ike_auth_establish(ike_sa *sa, const ike_chain *c)
{
    char err[512];
    int r;
    ike_child_result res;
    crypto_child_keys *keys = NULL;
    r = ike_child_from_answer(sa, c, sa->nonce_i, sizeof(sa->nonce_i), sa->nonce_r, sa->nonce_r_len, NULL, 0,
                              true, sa->child_spi_in, &res, &keys, err, sizeof(err));
    if (r == 0)
        sa->child_spi_out = res.spi_out;
    if (r < 0) {
        ike_info_send_final(sa, false); /* an IKE SA without its CHILD SA is of no use */
        ike_sa_fail(sa, r, "%s", err);
        return;
    }
    uint8_t keymat[4 * CRYPTO_MAX_KEY_LEN];
    size_t kl = ike_child_keymat(keys, true, keymat, sizeof(keymat));
    crypto_child_keys_free(keys);
    res.keymat = keymat;
    res.keymat_len = kl;
    ike_mobike_process_auth(sa, c); /* authenticated: the gateway's AUTH verified */
    ike_sa_set_state(sa, IKE_SA_ESTABLISHED);
    char vip[INET_ADDRSTRLEN + INET6_ADDRSTRLEN + 8] = "-";
    char v4[INET_ADDRSTRLEN] = "", v6[INET6_ADDRSTRLEN] = "";
    if (res.has_vip)
        inet_ntop(AF_INET, res.vip, v4, sizeof(v4));
    if (res.has_vip6)
        inet_ntop(AF_INET6, res.vip6, v6, sizeof(v6));
    if (res.has_vip || res.has_vip6)
        snprintf(vip, sizeof(vip), "%s%s%s", v4, v4[0] && v6[0] ? " and " : "", v6);
    LOG_INFO(sa->log, "ike", "IKE SA established with %s (%s), CHILD SA %08x/%08x (%s), virtual IP %s",
             sa->gw_text, sa->ike_alg, res.spi_in, res.spi_out, sa->esp_alg, vip);
    if (sa->cfg.prof->ike.dpd_s)
        core_timer_arm(sa->loop, &sa->dpd_timer, (uint64_t)sa->cfg.prof->ike.dpd_s * 1000);
    ike_rekey_plan_ike(sa);
    if (sa->hooks.on_established)
        sa->hooks.on_established(sa->hooks.arg, &res);
    secure_wipe(keymat, sizeof(keymat));
}
