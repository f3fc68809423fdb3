/* SPDX-License-Identifier: Apache-2.0 */
/* IKE_SA_INIT (RFC 7296 §1.2): proposals, key exchange, nonces, NAT detection,
 * COOKIE (§2.6) and INVALID_KE_PAYLOAD (§1.2) retries. */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/secmem.h"
#include "sa_internal.h"

#define MAX_COOKIE_TRIES 3

int ike_natd_hash(const ike_sa *sa, const uint8_t spi_r[8], const struct sockaddr_storage *ss,
                     uint8_t out[20])
{
    const uint8_t *ip;
    size_t ip_len;
    uint16_t port;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
        ip = (const uint8_t *)&in->sin_addr;
        ip_len = 4;
        port = in->sin_port;
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
        ip = (const uint8_t *)&in6->sin6_addr;
        ip_len = 16;
        port = in6->sin6_port;
    } else {
        return M2MVPN_E_INVAL;
    }
    crypto_span parts[4] = {
        { sa->spi_i, 8 }, { spi_r, 8 }, { ip, ip_len }, { (const uint8_t *)&port, 2 },
    };
    return crypto_sha1(parts, 4, out);
}

static int build_and_send(ike_sa *sa)
{
    size_t cap = 8192;
    uint8_t *buf = malloc(cap);
    if (!buf)
        return M2MVPN_E_NOMEM;
    buf_writer w;
    buf_writer_init(&w, buf, cap);
    ike_header hdr;
    ike_sa_header(sa, &hdr, IKE_EXCH_IKE_SA_INIT, false, 0);
    ike_header_build(&w, &hdr);
    ike_chain_writer cw;
    ike_chain_writer_init(&cw, &w, 16);
    const profile *p = sa->cfg.prof;

    if (sa->cookie_len)
        ike_build_notify(&cw, IKE_PROTO_NONE, IKE_N_COOKIE, NULL, 0, sa->cookie, sa->cookie_len);
    ike_build_sa(&cw, p->ike.proposals, p->ike.n_proposals, IKE_PROTO_IKE, NULL, 0);
    uint8_t pub[CRYPTO_MAX_KE_LEN];
    size_t pub_len = 0;
    int r = crypto_ke_public(sa->ke, pub, sizeof(pub), &pub_len);
    if (r < 0)
        goto out;
    ike_build_ke(&cw, sa->ke_group, pub, pub_len);
    ike_build_nonce(&cw, sa->nonce_i, sizeof(sa->nonce_i));

    /* Our datapath is ESP in UDP only, so NAT traversal is always wanted: a
     * source hash that cannot match makes the gateway encapsulate (as
     * strongSwan's encap=yes does). The destination hash is honest. */
    ike_build_notify(&cw, IKE_PROTO_NONE, IKE_N_NAT_DETECTION_SOURCE_IP, NULL, 0, sa->natd_src,
                     sizeof(sa->natd_src));
    uint8_t h[20];
    if ((r = ike_natd_hash(sa, sa->spi_r, &sa->cfg.remote, h)) < 0)
        goto out;
    ike_build_notify(&cw, IKE_PROTO_NONE, IKE_N_NAT_DETECTION_DESTINATION_IP, NULL, 0, h, sizeof(h));
    if (p->ike.fragmentation)
        ike_build_notify(&cw, IKE_PROTO_NONE, IKE_N_IKEV2_FRAGMENTATION_SUPPORTED, NULL, 0, NULL, 0);
    const uint16_t *hashes;
    size_t n_hashes = pki_hash_algs_supported(&hashes);
    uint8_t hb[16];
    for (size_t i = 0; i < n_hashes && i < 8; i++)
        buf_store_be16(hb + 2 * i, hashes[i]);
    ike_build_notify(&cw, IKE_PROTO_NONE, IKE_N_SIGNATURE_HASH_ALGORITHMS, NULL, 0, hb, 2 * n_hashes);
    ike_chain_writer_finish(&cw);
    ike_message_finish(&w, 0);
    if (!buf_writer_ok(&w)) {
        r = M2MVPN_E_INVAL;
        goto out;
    }
    size_t len = buf_writer_len(&w);
    free(sa->init_req);
    sa->init_req = malloc(len);
    if (!sa->init_req) {
        r = M2MVPN_E_NOMEM;
        goto out;
    }
    memcpy(sa->init_req, buf, len);
    sa->init_req_len = len;
    uint8_t *fit = realloc(buf, len); /* kept for retransmission: the bytes sent only */
    if (fit)
        buf = fit;
    ike_span span = { 0, len };
    sa->req.message_id = 0;
    sa->req.exchange = IKE_EXCH_IKE_SA_INIT;
    LOG_INFO(sa->log, "ike", "sending IKE_SA_INIT to %s (%s, %zu bytes)", sa->gw_text,
             proposal_ke_name(sa->ke_group), len);
    ike_sa_set_state(sa, IKE_SA_INIT_SENT);
    return ike_sa_send_request(sa, IKE_TASK_INIT, buf, &span, 1);
out:
    free(buf);
    return r;
}

static int new_ke(ike_sa *sa, uint16_t group)
{
    crypto_ke_free(sa->ke);
    sa->ke = NULL;
    sa->ke_group = group;
    return crypto_ke_new(group, &sa->ke);
}

/* Trade the current request's key pair and bytes for the superseded one's. */
static void swap_prev_request(ike_sa *sa)
{
    crypto_ke *ke = sa->ke;
    uint16_t group = sa->ke_group;
    uint8_t *req = sa->init_req;
    size_t req_len = sa->init_req_len;
    sa->ke = sa->prev_ke;
    sa->ke_group = sa->prev_ke_group;
    sa->init_req = sa->prev_init_req;
    sa->init_req_len = sa->prev_init_req_len;
    sa->prev_ke = ke;
    sa->prev_ke_group = group;
    sa->prev_init_req = req;
    sa->prev_init_req_len = req_len;
}

/* Build and send; any failure ends the SA (the caller learns it via on_down). */
static int send_init(ike_sa *sa)
{
    int r = build_and_send(sa);
    if (r < 0)
        ike_sa_fail_local(sa, r, "cannot build IKE_SA_INIT (%s)", core_strerror(r));
    return r;
}

static ike_task_status init_build(ike_sa *sa)
{
    const profile *p = sa->cfg.prof;
    if (p->ike.n_proposals == 0 || p->ike.proposals[0].n_ke == 0) {
        ike_sa_fail_local(sa, M2MVPN_E_PROFILE, "the profile has no IKE proposal with a key exchange");
        return IKE_TASK_FAILED;
    }
    /* Drawn once: a retry after COOKIE must leave the other payloads
     * unchanged (RFC 7296 §2.6). */
    int r = crypto_random(sa->natd_src, sizeof(sa->natd_src));
    if (r < 0) {
        ike_sa_fail_local(sa, r, "random number generator failed");
        return IKE_TASK_FAILED;
    }
    r = new_ke(sa, p->ike.proposals[0].ke[0]);
    if (r < 0) {
        ike_sa_fail_local(sa, r, "cannot create a %s key pair", proposal_ke_name(p->ike.proposals[0].ke[0]));
        return IKE_TASK_FAILED;
    }
    return send_init(sa) < 0 ? IKE_TASK_FAILED : IKE_TASK_NEED_MORE;
}

static bool list_has(const uint16_t *list, size_t n, uint16_t v)
{
    for (size_t i = 0; i < n; i++)
        if (list[i] == v)
            return true;
    return false;
}

static bool we_offered_ke(const profile *p, uint16_t group)
{
    for (size_t i = 0; i < p->ike.n_proposals; i++)
        if (list_has(p->ike.proposals[i].ke, p->ike.proposals[i].n_ke, group))
            return true;
    return false;
}

/* The chosen ENCR transform is the offered one with exactly its Key Length
 * attribute (RFC 7296 §3.3.5): for AES the size we asked for; a cipher with
 * one key size (ChaCha20-Poly1305, RFC 7634) has none, and a Key Length that
 * names that very size is tolerated. Any other value would reach key setup. */
static bool encr_matches(const proposal_encr *ours, uint16_t id, uint16_t key_bits)
{
    if (ours->id != id)
        return false;
    if (ike_encr_has_key_length(id))
        return key_bits == ours->key_bits;
    return key_bits == 0 || key_bits == ours->key_bits;
}

/* Is the gateway's choice one of the combinations we offered: the proposal
 * its number names (§3.3.1: the responder echoes it), and in it every
 * chosen transform one we listed, with nothing of a type that does not
 * belong to the protocol (parse_choice already refused unknown types and
 * attributes and a type twice)? */
bool ike_choice_offered(const ike_sa_choice *c, const proposal *props, size_t n, bool ike)
{
    if (c->number == 0 || c->number > n)
        return false;
    const proposal *p = &props[c->number - 1];
    if (!ike_sa_choice_has(c, IKE_TT_ENCR))
        return false;
    bool encr = false;
    for (size_t j = 0; j < p->n_encr; j++)
        encr |= encr_matches(&p->encr[j], c->id[IKE_TT_ENCR], c->encr_key_bits);
    if (!encr)
        return false;
    bool aead = proposal_encr_is_aead(c->id[IKE_TT_ENCR]);
    if (aead ? ike_sa_choice_has(c, IKE_TT_INTEG) && c->id[IKE_TT_INTEG] != 0
             : !ike_sa_choice_has(c, IKE_TT_INTEG) || !list_has(p->integ, p->n_integ, c->id[IKE_TT_INTEG]))
        return false;
    if (ike) {
        if (!ike_sa_choice_has(c, IKE_TT_PRF) || !list_has(p->prf, p->n_prf, c->id[IKE_TT_PRF]))
            return false;
        if (!ike_sa_choice_has(c, IKE_TT_KE) || !list_has(p->ke, p->n_ke, c->id[IKE_TT_KE]))
            return false;
        return !ike_sa_choice_has(c, IKE_TT_ESN); /* ESN belongs to ESP and AH */
    }
    if (ike_sa_choice_has(c, IKE_TT_PRF))
        return false; /* a PRF belongs to an IKE SA */
    if (ike_sa_choice_has(c, IKE_TT_KE) && c->id[IKE_TT_KE] != 0 &&
        !list_has(p->ke, p->n_ke, c->id[IKE_TT_KE]))
        return false;
    uint16_t esn = ike_sa_choice_has(c, IKE_TT_ESN) ? c->id[IKE_TT_ESN] : ESN_NO;
    uint16_t none = ESN_NO;
    return p->n_esn ? list_has(p->esn, p->n_esn, esn) : list_has(&none, 1, esn);
}

/* A CREATE_CHILD_SA choice of ESP proposal c->number keeps PFS: where that
 * proposal lists key exchange groups (none of them NONE), the choice has one
 * of them. Not for IKE_AUTH: its CHILD SA never has a key exchange (§1.2). */
bool ike_choice_keeps_pfs(const ike_sa_choice *c, const proposal *props, size_t n)
{
    if (c->number == 0 || c->number > n)
        return false;
    const proposal *p = &props[c->number - 1];
    if (p->n_ke == 0 || list_has(p->ke, p->n_ke, 0))
        return true;
    return ike_sa_choice_has(c, IKE_TT_KE) && c->id[IKE_TT_KE] != 0 && list_has(p->ke, p->n_ke, c->id[IKE_TT_KE]);
}

static void describe_ours(const proposal *props, size_t n, proposal_kind kind, char *out, size_t len)
{
    size_t used = 0;
    out[0] = '\0';
    for (size_t i = 0; i < n && used + 2 < len; i++) {
        char one[256];
        proposal_format(&props[i], kind, one, sizeof(one));
        used += (size_t)snprintf(out + used, len - used, "%s%s", i ? ", " : "", one);
    }
}

/* An IKE_SA_INIT response that passed every check, not yet applied. */
typedef struct init_answer {
    uint8_t spi_r[8];
    ike_sa_choice choice;
    buf_reader nonce;
    bool nat_here;
    uint8_t natd_dst[20];          /* the gateway's NAT_DETECTION_DESTINATION_IP */
    bool peer_frag;
    uint16_t peer_hashes[8];
    size_t n_peer_hashes;
    uint8_t g_ir[CRYPTO_MAX_KE_LEN];
    size_t g_ir_len;
} init_answer;

/* Can we sign our AUTH with what the answer announced? A key that needs
 * RFC 7427 hashes (Ed25519: the "Identity" hash, RFC 8420) cannot sign for a
 * gateway that did not announce them: the answer is unacceptable, a fault
 * of the answer (a forger can leave the notify out), not of our key. A key
 * we cannot read here is left to IKE_AUTH, which reports it as ours. */
static bool answer_lets_us_sign(ike_sa *sa, const init_answer *a, char *why, size_t why_len)
{
    if (sa->cfg.prof->auth != PROFILE_AUTH_CERT || !sa->cfg.cred)
        return true;
    pki_key_type kt;
    unsigned bits;
    char err[256];
    if (cred_key_info(sa->cfg.cred, &kt, &bits, err, sizeof(err)) < 0)
        return true;
    pki_auth_method method;
    pki_sig_scheme scheme;
    ike_fault fault;
    /* A failure that no gateway could help is left to IKE_AUTH, as ours. */
    return ike_auth_choose(sa, kt, a->peer_hashes, a->n_peer_hashes, &method, &scheme, &fault, why, why_len) == 0 ||
           fault == IKE_FAULT_LOCAL;
}

/* Check a whole IKE_SA_INIT response without changing the SA: payloads,
 * the chosen proposal against what we offered, the key exchange (the shared
 * secret is computed here, so an invalid public value is the answer's
 * fault), NAT detection. Errors: E_PROTOCOL, E_NOTSUPP with `why`. */
static int check_answer(ike_sa *sa, const ike_message *msg, init_answer *a, char *why, size_t why_len)
{
    const profile *p = sa->cfg.prof;
    const ike_chain *c = &msg->chain;
    ike_diag d;
    ike_diag_clear(&d);
    const ike_payload *sa_pl = ike_chain_find(c, IKE_PL_SA, NULL);
    const ike_payload *ke_pl = ike_chain_find(c, IKE_PL_KE, NULL);
    const ike_payload *nr_pl = ike_chain_find(c, IKE_PL_NONCE, NULL);
    if (!sa_pl || !ke_pl || !nr_pl || msg->hdr.spi_r == 0) {
        snprintf(why, why_len, "IKE_SA_INIT response from %s lacks SA, KE, nonce or SPI", sa->gw_text);
        return M2MVPN_E_PROTOCOL;
    }
    ike_ke ke;
    if (ike_sa_parse_choice(sa_pl->body, &a->choice, &d) < 0 || ike_ke_parse(ke_pl->body, &ke, &d) < 0 ||
        ike_nonce_parse(nr_pl->body, &a->nonce, &d) < 0) {
        snprintf(why, why_len, "malformed IKE_SA_INIT response from %s: %s", sa->gw_text, d.text);
        return M2MVPN_E_PROTOCOL;
    }
    const ike_sa_choice *ch = &a->choice;
    if (ch->protocol != IKE_PROTO_IKE || ch->spi_len != 0 ||
        !ike_choice_offered(ch, p->ike.proposals, p->ike.n_proposals, true)) {
        char enc[24] = "";
        if (ch->encr_key_bits)
            snprintf(enc, sizeof(enc), " key length %u", ch->encr_key_bits);
        snprintf(why, why_len, "gateway %s chose an IKE proposal we did not offer (proposal %u: "
                 "encryption %u%s, PRF %u, integrity %u, key exchange %u)", sa->gw_text, ch->number,
                 ch->id[IKE_TT_ENCR], enc, ch->id[IKE_TT_PRF], ch->id[IKE_TT_INTEG], ch->id[IKE_TT_KE]);
        return M2MVPN_E_PROTOCOL;
    }
    if (ke.group != sa->ke_group || ch->id[IKE_TT_KE] != sa->ke_group) {
        snprintf(why, why_len, "gateway %s answered with key exchange %u instead of %s", sa->gw_text,
                 ke.group, proposal_ke_name(sa->ke_group));
        return M2MVPN_E_PROTOCOL;
    }
    for (int i = 0; i < 8; i++)
        a->spi_r[i] = (uint8_t)(msg->hdr.spi_r >> (56 - 8 * i));

    /* NAT detection and capabilities. */
    bool have_src = false, have_dst = false, dst_match = false;
    uint8_t ours[20];
    if (ike_natd_hash(sa, a->spi_r, &sa->cfg.local, ours) < 0)
        memset(ours, 0, sizeof(ours));
    ike_notify n;
    for (size_t i = 0; i < c->n; i++) {
        if (c->pl[i].type != IKE_PL_NOTIFY || ike_notify_parse(c->pl[i].body, &n, &d) < 0)
            continue;
        switch (n.type) {
        case IKE_N_NAT_DETECTION_SOURCE_IP:
            have_src = true;
            break;
        case IKE_N_NAT_DETECTION_DESTINATION_IP:
            have_dst = true;
            dst_match |= n.data.len == 20 && memcmp(n.data.p, ours, 20) == 0;
            if (n.data.len == 20)
                memcpy(a->natd_dst, n.data.p, 20);
            break;
        case IKE_N_IKEV2_FRAGMENTATION_SUPPORTED:
            a->peer_frag = true;
            break;
        case IKE_N_SIGNATURE_HASH_ALGORITHMS:
            /* Keep only the hash algorithms we know (RFC 7427 §4, values 1..5),
             * so a long list cannot push a known one out. */
            for (size_t k = 0; k + 1 < n.data.len && a->n_peer_hashes < 8; k += 2) {
                uint16_t h = buf_load_be16(n.data.p + k);
                if (h >= PKI_HASH_SHA1 && h <= PKI_HASH_IDENTITY)
                    a->peer_hashes[a->n_peer_hashes++] = h;
            }
            break;
        default:
            break;
        }
    }
    if (!have_src || !have_dst) {
        snprintf(why, why_len, "gateway %s does not support NAT traversal (RFC 3948), which this "
                 "client's userspace ESP-in-UDP datapath needs", sa->gw_text);
        return M2MVPN_E_PROTOCOL;
    }
    a->nat_here = !dst_match;
    if (!answer_lets_us_sign(sa, a, why, why_len))
        return M2MVPN_E_NOTSUPP;
    char err[192];
    int r = crypto_ke_derive(sa->ke, ke.data.p, ke.data.len, a->g_ir, sizeof(a->g_ir), &a->g_ir_len,
                             err, sizeof(err));
    if (r < 0) {
        snprintf(why, why_len, "gateway %s sent an invalid key exchange value: %s", sa->gw_text, err);
        return M2MVPN_E_PROTOCOL;
    }
    return 0;
}

/* Keep a checked answer; IKE_AUTH follows. */
static ike_task_status accept_answer(ike_sa *sa, const ike_message *msg, const init_answer *a)
{
    const ike_sa_choice *ch = &a->choice;
    sa->init_error = 0; /* a real answer after all */
    memcpy(sa->spi_r, a->spi_r, 8);
    memcpy(sa->nonce_r, a->nonce.p, a->nonce.len);
    sa->nonce_r_len = a->nonce.len;
    sa->suite.encr_id = ch->id[IKE_TT_ENCR];
    /* Checked against the offer: absent only for ChaCha20-Poly1305 (256). */
    sa->suite.encr_key_bits = ch->encr_key_bits ? ch->encr_key_bits : 256;
    sa->suite.integ_id = ike_sa_choice_has(ch, IKE_TT_INTEG) ? ch->id[IKE_TT_INTEG] : 0;
    sa->suite.prf_id = ch->id[IKE_TT_PRF];
    snprintf(sa->ike_alg, sizeof(sa->ike_alg), "%s%s%s-%s-%s",
             proposal_encr_name(sa->suite.encr_id, sa->suite.encr_key_bits),
             sa->suite.integ_id ? "-" : "", sa->suite.integ_id ? proposal_integ_name(sa->suite.integ_id) : "",
             proposal_prf_name(sa->suite.prf_id), proposal_ke_name(sa->ke_group));
    sa->peer_frag = a->peer_frag;
    memcpy(sa->peer_hashes, a->peer_hashes, sizeof(sa->peer_hashes));
    sa->n_peer_hashes = a->n_peer_hashes;
    sa->nat_here = a->nat_here;
    /* Our address as the gateway saw it: a MOBIKE liveness check that
     * finds another one has seen the NAT mapping change (mobike.c). */
    memcpy(sa->mobike.natd_seen, a->natd_dst, sizeof(a->natd_dst));
    memcpy(sa->mobike.natd_spis, sa->spi_i, 8);
    memcpy(sa->mobike.natd_spis + 8, sa->spi_r, 8);
    sa->mobike.natd_seen_set = true;
    sa->natt = true;
    char *colon = strrchr(sa->gw_text, ':');
    if (colon)
        snprintf(colon, sizeof(sa->gw_text) - (size_t)(colon - sa->gw_text), ":4500");

    free(sa->init_resp);
    sa->init_resp = malloc(msg->raw.len);
    if (!sa->init_resp) {
        ike_sa_fail_local(sa, M2MVPN_E_NOMEM, "out of memory");
        return IKE_TASK_FAILED;
    }
    memcpy(sa->init_resp, msg->raw.p, msg->raw.len);
    sa->init_resp_len = msg->raw.len;
    char err[192];
    int r = ike_sa_install_keys(sa, a->g_ir, a->g_ir_len, err, sizeof(err));
    crypto_ke_free(sa->ke);
    sa->ke = NULL;
    if (r < 0) {
        /* The gateway's choice was checked against our offer, so this is
         * more likely our build than the answer; but it follows from what
         * the gateway chose, and it may choose another of our proposals
         * next time: not a reason to stop trying. */
        ike_sa_fail(sa, r, "%s", err);
        return IKE_TASK_FAILED;
    }
    LOG_INFO(sa->log, "ike", "IKE_SA_INIT done with %s: %s%s%s", sa->gw_text, sa->ike_alg,
             sa->nat_here ? ", NAT in front of us" : "", sa->peer_frag ? ", fragmentation" : "");
    ike_sa_request_done(sa);
    sa->next_msg_id = 1;
    ike_task_queue(sa, IKE_TASK_AUTH);
    return IKE_TASK_DONE;
}

/* An answer with an error notify (unauthenticated: these count only if no
 * valid answer follows, ike_sa_init_error) or asking us to send again
 * (COOKIE, INVALID_KE_PAYLOAD, once each): false when it has none. */
static bool init_notified(ike_sa *sa, const ike_chain *c, ike_task_status *st)
{
    const profile *p = sa->cfg.prof;
    ike_diag d;
    ike_diag_clear(&d);
    ike_notify n;
    *st = IKE_TASK_NEED_MORE; /* sent again, or waiting for a valid answer */

    if (ike_chain_find_notify(c, IKE_N_COOKIE, &n, &d) == 0) {
        if (++sa->cookie_tries > MAX_COOKIE_TRIES || n.data.len == 0 || n.data.len > sizeof(sa->cookie)) {
            ike_sa_init_error(sa, M2MVPN_E_PROTOCOL, "gateway %s keeps asking for a COOKIE", sa->gw_text);
            return true;
        }
        memcpy(sa->cookie, n.data.p, n.data.len);
        sa->cookie_len = n.data.len;
        LOG_INFO(sa->log, "ike", "gateway asks for a COOKIE (RFC 7296 §2.6): retrying");
        ike_sa_request_done(sa);
        if (send_init(sa) < 0)
            *st = IKE_TASK_FAILED;
        return true;
    }
    if (ike_chain_find_notify(c, IKE_N_INVALID_KE_PAYLOAD, &n, &d) == 0) {
        uint16_t group = n.data.len == 2 ? buf_load_be16(n.data.p) : 0;
        /* Unauthenticated: these count only if no valid answer follows. */
        if (!we_offered_ke(p, group)) {
            ike_sa_init_error(sa, M2MVPN_E_NO_PROPOSAL,
                              "gateway %s wants key exchange %s, which the profile does not offer",
                              sa->gw_text, proposal_ke_name(group) ? proposal_ke_name(group) : "?");
            return true;
        }
        if (sa->ke_retried || group == sa->ke_group) {
            /* The group is one we offer: say what really went wrong. */
            ike_sa_init_error(sa, M2MVPN_E_NO_PROPOSAL,
                              "gateway %s refused our key exchange %s and asks for %s (INVALID_KE_PAYLOAD %s)",
                              sa->gw_text, proposal_ke_name(sa->ke_group), proposal_ke_name(group),
                              sa->ke_retried ? "again after one retry" : "for the group we sent");
            return true;
        }
        LOG_INFO(sa->log, "ike", "gateway prefers %s (INVALID_KE_PAYLOAD): retrying once",
                 proposal_ke_name(group));
        sa->ke_retried = true;
        ike_sa_request_done(sa);
        /* Keep the first request: its real answer may still come. */
        sa->prev_ke = sa->ke;
        sa->prev_ke_group = sa->ke_group;
        sa->prev_init_req = sa->init_req;
        sa->prev_init_req_len = sa->init_req_len;
        sa->ke = NULL;
        sa->init_req = NULL;
        if (new_ke(sa, group) < 0) {
            ike_sa_fail_local(sa, M2MVPN_E_CRYPTO, "cannot create a %s key pair", proposal_ke_name(group));
            *st = IKE_TASK_FAILED;
            return true;
        }
        if (send_init(sa) < 0)
            *st = IKE_TASK_FAILED;
        return true;
    }
    if (ike_chain_find_notify(c, IKE_N_NO_PROPOSAL_CHOSEN, &n, &d) == 0) {
        char ours[512];
        describe_ours(p->ike.proposals, p->ike.n_proposals, PROPOSAL_IKE, ours, sizeof(ours));
        ike_sa_init_error(sa, M2MVPN_E_NO_PROPOSAL,
                          "gateway %s accepted none of our IKE proposals (ours: %s; the gateway does "
                          "not disclose its own in IKEv2, see its log)", sa->gw_text, ours);
        return true;
    }
    for (size_t i = 0; i < c->n; i++) {
        if (c->pl[i].type != IKE_PL_NOTIFY || ike_notify_parse(c->pl[i].body, &n, &d) < 0)
            continue;
        if (n.type < 16384) {
            const char *name = ike_notify_name(n.type);
            ike_sa_init_error(sa, M2MVPN_E_PROTOCOL, "gateway %s refused IKE_SA_INIT: %s (%u)", sa->gw_text,
                              name ? name : "error", n.type);
            return true;
        }
    }
    return false;
}

static ike_task_status init_process(ike_sa *sa, const ike_message *msg, const ike_chain *c)
{
    ike_task_status st;
    if (init_notified(sa, c, &st))
        return st;
    /* Nothing in the answer is authenticated yet: check all of it before
     * any of it is kept, and let a bad one wait for a valid answer. */
    init_answer *a = calloc(1, sizeof(*a));
    if (!a) {
        ike_sa_fail_local(sa, M2MVPN_E_NOMEM, "out of memory");
        return IKE_TASK_FAILED;
    }
    char why[384];
    int r = check_answer(sa, msg, a, why, sizeof(why));
    if (r < 0 && sa->prev_ke) {
        /* An answer to the request an INVALID_KE_PAYLOAD replaced? */
        swap_prev_request(sa);
        char why_prev[384];
        memset(a, 0, sizeof(*a));
        if (check_answer(sa, msg, a, why_prev, sizeof(why_prev)) == 0) {
            LOG_INFO(sa->log, "ike", "answer to our first IKE_SA_INIT (%s) from %s: the "
                     "INVALID_KE_PAYLOAD before it was not the gateway's", proposal_ke_name(sa->ke_group),
                     sa->gw_text);
            r = 0;
        } else {
            swap_prev_request(sa);
        }
    }
    st = IKE_TASK_NEED_MORE;
    if (r < 0) {
        ike_sa_init_error(sa, r, "%s", why);
    } else {
        crypto_ke_free(sa->prev_ke);
        sa->prev_ke = NULL;
        free(sa->prev_init_req);
        sa->prev_init_req = NULL;
        st = accept_answer(sa, msg, a);
    }
    secure_free(a, sizeof(*a));
    return st;
}

const ike_task_ops ike_task_init = {
    .kind = IKE_TASK_INIT,
    .build = init_build,
    .process = init_process,
};
