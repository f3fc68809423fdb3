/* SPDX-License-Identifier: Apache-2.0 */
/*
 * EAP in IKE_AUTH (RFC 7296 §2.16), as the initiator:
 *
 *   FIRST  we sent IDi, [IDr], SA, TS, CP and no AUTH. The answer must carry
 *          the gateway's IDr, CERT and AUTH: verified (certificate chain,
 *          identity, signature) before anything of the EAP exchange is
 *          answered, so no EAP secret is computed for an unauthenticated
 *          gateway.
 *   EAP    each answer carries one EAP request; the EAP peer (eap.c) accepts
 *          it only in the state that expects it and produces the response.
 *   AUTH   after EAP-Success: our AUTH = prf(prf(MSK, "Key Pad for IKEv2"),
 *          InitiatorSignedOctets), with SK_pi instead of the MSK for a method
 *          without keys (EAP-MD5). The answer's AUTH, computed the same way
 *          over the ResponderSignedOctets, must verify; then the CHILD SA.
 *
 * Failures: the EAP peer's errors (AUTH_LOCAL: refused credentials, EAP-
 * Failure, premature Success, unexpected method; AUTH_PEER: a wrong MSCHAPv2
 * authenticator response or final AUTH). After a refused password nothing
 * more is sent: the attempt ends there, once.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/secmem.h"
#include "eap.h"
#include "sa_internal.h"

#define KEY_PAD "Key Pad for IKEv2"

int ike_eap_begin(ike_sa *sa, const uint8_t *idi_body, size_t len, char *err, size_t err_len)
{
    const profile *p = sa->cfg.prof;
    ike_eap_end(sa);
    if (!sa->cfg.eap_password || !sa->cfg.eap_password_len) {
        snprintf(err, err_len, "no EAP password for '%s' (profile auth.eap.password or m2mvpn_set_credentials)",
                 sa->cfg.eap_identity ? sa->cfg.eap_identity : p->eap.identity);
        return M2MVPN_E_CREDENTIALS;
    }
    const char *user = sa->cfg.eap_identity ? sa->cfg.eap_identity : p->eap.identity;
    eap_method m = p->eap.type && strcmp(p->eap.type, "md5") == 0 ? EAP_METHOD_MD5 : EAP_METHOD_MSCHAPV2;
    int r = eap_peer_new(m, user, sa->cfg.eap_password, sa->cfg.eap_password_len, &sa->eap);
    if (r < 0) {
        snprintf(err, err_len, r == M2MVPN_E_INVAL ? "EAP user name or password not usable (1..255 bytes of "
                 "user name, 1..256 bytes of UTF-8 password)" : "out of memory");
        return r == M2MVPN_E_INVAL ? M2MVPN_E_CREDENTIALS : r;
    }
    if (!(sa->eap_idi = malloc(len))) {
        ike_eap_end(sa);
        snprintf(err, err_len, "out of memory");
        return M2MVPN_E_NOMEM;
    }
    memcpy(sa->eap_idi, idi_body, len);
    sa->eap_idi_len = len;
    sa->eap_phase = IKE_EAP_PHASE_FIRST;
    LOG_DBG(sa->log, "ike", "EAP-%s as '%s'", eap_method_name(m), user);
    return 0;
}

void ike_eap_end(ike_sa *sa)
{
    eap_peer_free(sa->eap);
    sa->eap = NULL;
    free(sa->eap_idi);
    free(sa->eap_idr);
    sa->eap_idi = sa->eap_idr = NULL;
    sa->eap_idi_len = sa->eap_idr_len = 0;
    sa->eap_phase = IKE_EAP_PHASE_NONE;
}

/* prf(prf(key, "Key Pad for IKEv2"), octets) (RFC 7296 §2.15-2.16). */
static int shared_key_auth(ike_sa *sa, const uint8_t *key, size_t key_len, const uint8_t *octets, size_t len,
                           uint8_t *out, size_t cap)
{
    uint8_t k[CRYPTO_MAX_PRF_LEN];
    crypto_span pad = { (const uint8_t *)KEY_PAD, strlen(KEY_PAD) };
    int r = crypto_prf_oneshot(sa->suite.prf_id, key, key_len, &pad, 1, k, sizeof(k));
    if (r == 0) {
        crypto_span o = { octets, len };
        r = crypto_prf_oneshot(sa->suite.prf_id, k, crypto_prf_len(sa->suite.prf_id), &o, 1, out, cap);
    }
    secure_wipe(k, sizeof(k));
    return r;
}

/* The AUTH key once EAP has finished: the MSK, or SK_pi/SK_pr without one. */
static void auth_key(ike_sa *sa, bool ours, const uint8_t **key, size_t *len)
{
    eap_peer_msk(sa->eap, key, len);
    if (*len == 0) {
        const crypto_key *sk = ours ? &sa->keys->sk_pi : &sa->keys->sk_pr;
        *key = sk->b;
        *len = sk->len;
    }
}

static void eap_fail(ike_sa *sa, int r, const char *why)
{
    if (r == M2MVPN_E_AUTH_PEER)
        ike_info_send_final(sa, true); /* the gateway failed: tell it (§2.21.2) */
    bool refused = sa->eap && eap_peer_refused(sa->eap);
    ike_eap_end(sa);
    /* The gateway's fault: what it sent was malformed, did not verify, or
     * broke the EAP protocol (AUTH_LOCAL without a refusal: a premature
     * EAP-Success, another method); retried, the password kept. Ours:
     * refused credentials (never retried with the same password), memory,
     * our socket. */
    if (r == M2MVPN_E_AUTH_PEER || r == M2MVPN_E_PROTOCOL || (r == M2MVPN_E_AUTH_LOCAL && !refused))
        ike_sa_fail(sa, r, "EAP with gateway %s failed: %s", sa->gw_text, why);
    else
        ike_sa_fail_local(sa, r, "EAP with gateway %s failed: %s", sa->gw_text, why);
}

static int send_inner(ike_sa *sa, uint8_t *inner, size_t cap, size_t len, uint8_t first)
{
    int r = ike_sa_send_protected(sa, IKE_EXCH_IKE_AUTH, false, sa->next_msg_id, inner, len, first,
                                  IKE_TASK_AUTH);
    secure_wipe(inner, cap);
    return r;
}

/* EAP-Success: send our AUTH. */
static void send_final_auth(ike_sa *sa)
{
    uint8_t *octets = NULL, auth[CRYPTO_MAX_PRF_LEN], inner[128];
    size_t octets_len = 0, auth_len = crypto_prf_len(sa->suite.prf_id);
    const uint8_t *key;
    size_t key_len;
    auth_key(sa, true, &key, &key_len);
    int r = ike_auth_octets(sa, true, sa->eap_idi, sa->eap_idi_len, &octets, &octets_len);
    if (r == 0)
        r = shared_key_auth(sa, key, key_len, octets, octets_len, auth, sizeof(auth));
    free(octets);
    if (r < 0) {
        eap_fail(sa, r, "cannot compute our AUTH");
        return;
    }
    buf_writer w;
    buf_writer_init(&w, inner, sizeof(inner));
    ike_chain_writer cw;
    ike_chain_writer_init(&cw, &w, SIZE_MAX);
    ike_build_auth(&cw, PKI_AUTH_SHARED_KEY, auth, auth_len);
    ike_chain_writer_finish(&cw);
    secure_wipe(auth, sizeof(auth));
    sa->eap_phase = IKE_EAP_PHASE_AUTH;
    LOG_INFO(sa->log, "ike", "EAP succeeded; sending AUTH to %s", sa->gw_text);
    if ((r = send_inner(sa, inner, sizeof(inner), buf_writer_len(&w), cw.first_type)) < 0)
        eap_fail(sa, r, "cannot send IKE_AUTH");
}

/* One EAP request from the gateway's answer. */
static void process_eap_request(ike_sa *sa, const ike_chain *c)
{
    const ike_payload *pl = ike_chain_find(c, IKE_PL_EAP, NULL);
    ike_eap e;
    ike_diag d;
    ike_diag_clear(&d);
    if (!pl || ike_eap_parse(pl->body, &e, &d) < 0) {
        ike_eap_end(sa);
        ike_sa_fail(sa, M2MVPN_E_PROTOCOL, "IKE_AUTH answer from %s without a valid EAP payload %s",
                    sa->gw_text, d.text);
        return;
    }
    uint8_t out[EAP_MAX_PACKET];
    size_t out_len = 0;
    char err[256];
    int r = eap_peer_process(sa->eap, pl->body.p, pl->body.len, out, sizeof(out), &out_len, err, sizeof(err));
    if (r < 0) {
        secure_wipe(out, sizeof(out));
        eap_fail(sa, r, err);
        return;
    }
    if (r == EAP_STEP_DONE) {
        send_final_auth(sa);
        return;
    }
    uint8_t inner[EAP_MAX_PACKET + 64];
    buf_writer w;
    buf_writer_init(&w, inner, sizeof(inner));
    ike_chain_writer cw;
    ike_chain_writer_init(&cw, &w, SIZE_MAX);
    ike_build_eap(&cw, out, out_len);
    ike_chain_writer_finish(&cw);
    secure_wipe(out, sizeof(out));
    sa->eap_phase = IKE_EAP_PHASE_EAP;
    LOG_DBG(sa->log, "ike", "EAP state %s: answering the gateway", eap_peer_state_name(eap_peer_get_state(sa->eap)));
    if (!ike_chain_writer_ok(&cw) || (r = send_inner(sa, inner, sizeof(inner), buf_writer_len(&w), cw.first_type)) < 0)
        eap_fail(sa, r < 0 ? r : M2MVPN_E_INVAL, "cannot send the EAP response");
}

/* The gateway's AUTH after EAP, over its signed octets with the same key. */
static int verify_final_auth(ike_sa *sa, const ike_chain *c, char *err, size_t err_len)
{
    const ike_payload *pl = ike_chain_find(c, IKE_PL_AUTH, NULL);
    ike_auth a;
    ike_diag d;
    ike_diag_clear(&d);
    if (!pl || ike_auth_parse(pl->body, &a, &d) < 0) {
        snprintf(err, err_len, "final IKE_AUTH answer without a valid AUTH %s", d.text);
        return M2MVPN_E_PROTOCOL;
    }
    size_t n = crypto_prf_len(sa->suite.prf_id);
    if (a.method != PKI_AUTH_SHARED_KEY || a.data.len != n) {
        snprintf(err, err_len, "final AUTH is not a shared-key MAC of the EAP key (method %u)", a.method);
        return M2MVPN_E_AUTH_PEER;
    }
    const uint8_t *key;
    size_t key_len;
    auth_key(sa, false, &key, &key_len);
    uint8_t *octets = NULL, want[CRYPTO_MAX_PRF_LEN];
    size_t octets_len = 0;
    int r = ike_auth_octets(sa, false, sa->eap_idr, sa->eap_idr_len, &octets, &octets_len);
    if (r == 0)
        r = shared_key_auth(sa, key, key_len, octets, octets_len, want, sizeof(want));
    free(octets);
    bool ok = r == 0 && crypto_memeq(want, a.data.p, n);
    secure_wipe(want, sizeof(want));
    if (!ok) {
        snprintf(err, err_len, "the gateway's AUTH over the EAP key does not verify");
        return M2MVPN_E_AUTH_PEER;
    }
    return 0;
}

void ike_eap_process(ike_sa *sa, const ike_chain *c)
{
    char err[512];
    int r;
    switch (sa->eap_phase) {
    case IKE_EAP_PHASE_FIRST: {
        /* The gateway's certificate and AUTH before anything else. */
        if ((r = ike_auth_verify_gateway(sa, c, err, sizeof(err))) < 0) {
            ike_info_send_final(sa, true);
            ike_eap_end(sa);
            ike_sa_fail(sa, r == M2MVPN_E_PROTOCOL ? r : M2MVPN_E_AUTH_PEER,
                        "gateway %s could not be authenticated: %s", sa->gw_text, err);
            return;
        }
        const ike_payload *idr = ike_chain_find(c, IKE_PL_IDR, NULL);
        if (!(sa->eap_idr = malloc(idr->body.len ? idr->body.len : 1))) {
            eap_fail(sa, M2MVPN_E_NOMEM, "out of memory");
            return;
        }
        memcpy(sa->eap_idr, idr->body.p, idr->body.len);
        sa->eap_idr_len = idr->body.len;
        LOG_INFO(sa->log, "ike", "gateway %s authenticated by its certificate; starting EAP", sa->gw_text);
        process_eap_request(sa, c);
        return;
    }
    case IKE_EAP_PHASE_EAP:
        process_eap_request(sa, c);
        return;
    case IKE_EAP_PHASE_AUTH:
        if ((r = verify_final_auth(sa, c, err, sizeof(err))) < 0) {
            eap_fail(sa, r, err);
            return;
        }
        ike_eap_end(sa); /* MSK, NT hash and password wiped */
        ike_auth_establish(sa, c);
        return;
    default:
        ike_sa_fail(sa, M2MVPN_E_PROTOCOL, "IKE_AUTH answer from %s outside an EAP exchange", sa->gw_text);
        return;
    }
}
