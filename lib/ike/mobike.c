/* SPDX-License-Identifier: Apache-2.0 */
/*
 * MOBIKE (RFC 4555) as the initiator that moves: we announce it in IKE_AUTH,
 * keep the gateway's other addresses, and when our address changes send an
 * INFORMATIONAL {UPDATE_SA_ADDRESSES, NAT_DETECTION_*, COOKIE2} from the new
 * one; the gateway then moves its IKE and CHILD SAs there (strongSwan does no
 * implicit move under MOBIKE). A NAT mapping that changes under us shows in
 * the NAT detection a liveness check carries: then we send the update too.
 *
 * Every address we keep comes from a message whose integrity was verified
 * (IKE_AUTH's last response, the gateway's INFORMATIONAL requests). Our own
 * address changes on our own decision (lib/conn saw it move); the gateway's
 * only when its address stopped answering a request of ours, one of its
 * other addresses answered it (integrity checked, and from that address),
 * and the UPDATE_SA_ADDRESSES sent there was answered with our COOKIE2
 * (failover, §3.5). A failed update there ends the SA.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include "core/error.h"
#include "sa_internal.h"

static bool active(const ike_sa *sa)
{
    return sa->cfg.prof->ike.mobike && sa->mobike.peer;
}

bool ike_sa_mobike(const ike_sa *sa)
{
    return active(sa);
}

void ike_sa_mobike_inherit(ike_sa *sa, const ike_sa *from)
{
    if (!active(sa) || sa->mobike.addrs_set || !from || !from->mobike.addrs_set)
        return;
    memcpy(sa->mobike.addrs, from->mobike.addrs, sizeof(sa->mobike.addrs));
    sa->mobike.n_addrs = from->mobike.n_addrs;
    sa->mobike.addrs_set = true;
    LOG_INFO(sa->log, "ike", "gateway %s: its %zu other address%s kept from the replaced IKE SA", sa->gw_text,
             sa->mobike.n_addrs, sa->mobike.n_addrs == 1 ? "" : "es");
}

void ike_mobike_build_auth(ike_sa *sa, ike_chain_writer *cw)
{
    if (sa->cfg.prof->ike.mobike)
        ike_build_notify(cw, IKE_PROTO_NONE, IKE_N_MOBIKE_SUPPORTED, NULL, 0, NULL, 0);
}

/* The gateway's address list from an authenticated message: any
 * ADDITIONAL_*_ADDRESS replaces the list, NO_ADDITIONAL_ADDRESSES empties it
 * (§3.6); a message with neither leaves it. */
static void take_addresses(ike_sa *sa, const ike_mobike_info *m)
{
    if (!m->n_addrs && !m->no_additional)
        return;
    sa->mobike.n_addrs = 0;
    sa->mobike.addrs_set = true;
    for (size_t i = 0; i < m->n_addrs; i++)
        sa->mobike.addrs[sa->mobike.n_addrs++] = m->addrs[i];
    LOG_INFO(sa->log, "ike", "gateway %s lists %zu other address%s%s", sa->gw_text, m->n_addrs,
             m->n_addrs == 1 ? "" : "es", m->n_addrs_skipped ? " (more ignored)" : "");
}

/* The MOBIKE notifies of a message from the gateway in *m; false, with a warning, if they are
   malformed (the message is then processed as if it had none). */
static bool scan_or_warn(ike_sa *sa, const ike_chain *c, ike_mobike_info *m)
{
    ike_diag d;
    ike_diag_clear(&d);
    if (ike_mobike_scan(c, m, &d) < 0) {
        LOG_WARN(sa->log, "ike", "gateway %s: MOBIKE notifies ignored: %s", sa->gw_text, d.text);
        return false;
    }
    return true;
}

void ike_mobike_process_auth(ike_sa *sa, const ike_chain *c)
{
    ike_mobike_info m;
    if (!scan_or_warn(sa, c, &m))
        return;
    sa->mobike.peer = m.supported;
    if (!sa->cfg.prof->ike.mobike)
        return;
    LOG_INFO(sa->log, "ike", "gateway %s %s MOBIKE", sa->gw_text, m.supported ? "supports" : "does not support");
    if (m.supported)
        take_addresses(sa, &m);
}

void ike_mobike_process_request(ike_sa *sa, const ike_chain *c)
{
    if (!active(sa))
        return;
    ike_mobike_info m;
    if (scan_or_warn(sa, c, &m))
        take_addresses(sa, &m);
}

static struct sockaddr_storage gateway_now(const ike_sa *sa);

static socklen_t addr_of(const ike_mobike_addr *a, uint16_t port, struct sockaddr_storage *out)
{
    memset(out, 0, sizeof(*out));
    if (a->family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)out;
        in6->sin6_family = AF_INET6;
        memcpy(&in6->sin6_addr, a->addr, 16);
        in6->sin6_port = htons(port);
        return sizeof(*in6);
    }
    struct sockaddr_in *in = (struct sockaddr_in *)out;
    in->sin_family = AF_INET;
    memcpy(&in->sin_addr, a->addr, 4);
    in->sin_port = htons(port);
    return sizeof(*in);
}

size_t ike_sa_peer_addresses(const ike_sa *sa, struct sockaddr_storage *out, size_t max)
{
    size_t n = 0;
    for (size_t i = 0; i < sa->mobike.n_addrs && n < max; i++, n++)
        addr_of(&sa->mobike.addrs[i], 500, &out[n]);
    return n;
}

/* The IPv4 address a v4-mapped IPv6 address (::ffff:A) stands for, so A
 * and ::ffff:A compare as the same host; 16 bytes otherwise. */
static size_t host_bytes(const struct sockaddr *sa, const uint8_t **p, uint16_t *port)
{
    static const uint8_t mapped[12] = { [10] = 0xff, [11] = 0xff };
    if (sa->sa_family == AF_INET) {
        *p = (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr;
        *port = ((const struct sockaddr_in *)sa)->sin_port;
        return 4;
    }
    if (sa->sa_family != AF_INET6)
        return 0;
    *p = (const uint8_t *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
    *port = ((const struct sockaddr_in6 *)sa)->sin6_port;
    if (memcmp(*p, mapped, 12) == 0) {
        *p += 12;
        return 4;
    }
    return 16;
}

static bool same_endpoint(const struct sockaddr *a, const struct sockaddr *b, bool port)
{
    const uint8_t *pa = NULL, *pb = NULL;
    uint16_t porta = 0, portb = 0;
    size_t la = host_bytes(a, &pa, &porta), lb = host_bytes(b, &pb, &portb);
    return la && la == lb && memcmp(pa, pb, la) == 0 && (!port || porta == portb);
}

static bool same_host(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    return same_endpoint((const struct sockaddr *)a, (const struct sockaddr *)b, false);
}

bool ike_mobike_from_probed(const ike_sa *sa, const struct sockaddr *from, socklen_t from_len)
{
    return from && from_len >= sizeof(struct sockaddr_in) &&
           same_endpoint(from, (const struct sockaddr *)&sa->mobike.fo_to, true);
}

bool ike_sa_from_remote(const ike_sa *sa, const struct sockaddr *from, socklen_t from_len)
{
    return from && from_len >= sizeof(struct sockaddr_in) &&
           same_endpoint(from, (const struct sockaddr *)&sa->cfg.remote, true);
}

/* Gateway failover (§3.5, §3.8 sense): the request the gateway's address
 * left unanswered goes, unchanged (same message ID: a gateway that got it
 * answers from its cache, §2.1), to its next other address. Only an answer
 * that passes the integrity check ends the search (handle_response ->
 * ike_mobike_failover_answered), and only from the address probed (an
 * answer held back and replayed while another one is probed does not
 * count). The update that follows goes there too; the gateway moves only
 * when its answer succeeds. That update unanswered: no further failover. */
bool ike_mobike_failover(ike_sa *sa)
{
    ike_mobike *m = &sa->mobike;
    if (!active(sa) || sa->state != IKE_SA_ESTABLISHED || !sa->hooks.send_to || !sa->req.natt ||
        m->fo_update) {
        m->fo_probing = false;
        m->fo_update = false;
        return false;
    }
    if (!m->fo_probing) {
        m->fo_next = 0;
        snprintf(m->fo_from, sizeof(m->fo_from), "%s", sa->gw_text);
    }
    while (m->fo_next < m->n_addrs) {
        struct sockaddr_storage to;
        socklen_t to_len = addr_of(&m->addrs[m->fo_next++], 4500, &to);
        if (same_host(&to, &sa->cfg.remote))
            continue;
        char text[64];
        ike_sa_format_addr(&to, text, sizeof(text));
        LOG_INFO(sa->log, "ike", "no answer from %s to request %u: trying the gateway's other address %s "
                 "(MOBIKE failover)", m->fo_from, sa->req.message_id, text);
        m->fo_to = to;
        m->fo_to_len = to_len;
        m->fo_probing = true;
        return true;
    }
    m->fo_probing = false;
    return false;
}

void ike_mobike_failover_answered(ike_sa *sa)
{
    ike_mobike *m = &sa->mobike;
    m->fo_probing = false;
    char to[64];
    ike_sa_format_addr(&m->fo_to, to, sizeof(to));
    LOG_INFO(sa->log, "ike", "%s answered (authenticated): updating the SA addresses there", to);
    /* A move of ours queued meanwhile stays ours: the update covers both. */
    bool ours = ike_task_queued(sa, IKE_TASK_MOBIKE) && m->update_ours;
    char why[sizeof(m->reason)];
    if (ours)
        snprintf(why, sizeof(why), "%s; gateway %s stopped answering, failover to its address %s", m->reason,
                 m->fo_from, to);
    else
        snprintf(why, sizeof(why), "gateway %s stopped answering, failover to its address %s", m->fo_from, to);
    ike_task_queue(sa, IKE_TASK_MOBIKE); /* before anything else queued: the gateway's side must follow */
    m->update_ours = ours;
    m->fo_update = true;
    snprintf(m->reason, sizeof(m->reason), "%s", why);
}

/* The failover's update succeeded: fo_to is the gateway's address now. */
static void failover_commit(ike_sa *sa)
{
    ike_mobike *m = &sa->mobike;
    struct sockaddr_storage remote = m->fo_to;
    if (remote.ss_family == AF_INET)
        ((struct sockaddr_in *)&remote)->sin_port = htons(500);
    else
        ((struct sockaddr_in6 *)&remote)->sin6_port = htons(500);
    sa->cfg.remote = remote;
    sa->cfg.remote_len = m->fo_to_len;
    ike_sa_format_addr(&m->fo_to, sa->gw_text, sizeof(sa->gw_text));
    /* Our side as the update's NAT detection covers it: where IKE leaves
     * from now (port 4500), as after a move of ours (lib/conn sys_roam). */
    if (sa->natt && sa->cfg.local.ss_family == AF_INET)
        ((struct sockaddr_in *)&sa->cfg.local)->sin_port = htons(4500);
    else if (sa->natt && sa->cfg.local.ss_family == AF_INET6)
        ((struct sockaddr_in6 *)&sa->cfg.local)->sin6_port = htons(4500);
    m->fo_moved = true;
}

/* The gateway as IKE now reaches it: its address on port 4500 once NAT
 * traversal moved there (what its own hash covers); the failover's
 * address while its update is queued or under way. */
static struct sockaddr_storage gateway_now(const ike_sa *sa)
{
    struct sockaddr_storage gw = sa->mobike.fo_update ? sa->mobike.fo_to : sa->cfg.remote;
    if (sa->natt && gw.ss_family == AF_INET)
        ((struct sockaddr_in *)&gw)->sin_port = htons(4500);
    else if (sa->natt && gw.ss_family == AF_INET6)
        ((struct sockaddr_in6 *)&gw)->sin6_port = htons(4500);
    return gw;
}

/* NAT detection for an INFORMATIONAL: the source hash random, as in
 * IKE_SA_INIT (init.c: our datapath is ESP in UDP only, so the gateway must
 * go on encapsulating whatever the new path is), the destination honest. */
static int build_natd(ike_sa *sa, ike_chain_writer *cw)
{
    uint8_t h[IKE_NATD_LEN];
    int r = crypto_random(h, sizeof(h));
    if (r < 0)
        return r;
    ike_build_notify(cw, IKE_PROTO_NONE, IKE_N_NAT_DETECTION_SOURCE_IP, NULL, 0, h, sizeof(h));
    struct sockaddr_storage gw = gateway_now(sa);
    if ((r = ike_natd_hash(sa, sa->spi_r, &gw, h)) < 0)
        return r;
    ike_build_notify(cw, IKE_PROTO_NONE, IKE_N_NAT_DETECTION_DESTINATION_IP, NULL, 0, h, sizeof(h));
    return 0;
}

void ike_mobike_build_dpd(ike_sa *sa, ike_chain_writer *cw)
{
    if (active(sa))
        build_natd(sa, cw);
}

/* Our address as the gateway saw it (its NAT_DETECTION_DESTINATION_IP):
 * true when it differs from what it saw last under the same SPIs. */
static bool mapping_changed(ike_sa *sa, const ike_mobike_info *m)
{
    if (!m->has_natd_dst)
        return false;
    uint8_t spis[16];
    memcpy(spis, sa->spi_i, 8);
    memcpy(spis + 8, sa->spi_r, 8);
    bool same_sa = sa->mobike.natd_seen_set && memcmp(spis, sa->mobike.natd_spis, 16) == 0;
    bool changed = same_sa && memcmp(m->natd_dst, sa->mobike.natd_seen, IKE_NATD_LEN) != 0;
    memcpy(sa->mobike.natd_seen, m->natd_dst, IKE_NATD_LEN);
    memcpy(sa->mobike.natd_spis, spis, 16);
    sa->mobike.natd_seen_set = true;
    return changed;
}

static void queue_update(ike_sa *sa, const char *reason, bool ours)
{
    if (ike_task_queued(sa, IKE_TASK_MOBIKE) && (sa->mobike.update_ours || sa->mobike.fo_update) && !ours)
        return; /* our own move (or a failover's) is queued: it covers the new mapping too */
    ike_task_queue(sa, IKE_TASK_MOBIKE);
    sa->mobike.update_ours = ours;
    snprintf(sa->mobike.reason, sizeof(sa->mobike.reason), "%s", reason);
}

void ike_mobike_process_dpd(ike_sa *sa, const ike_chain *c)
{
    if (!active(sa))
        return;
    ike_mobike_info m;
    ike_diag d;
    ike_diag_clear(&d);
    if (ike_mobike_scan(c, &m, &d) < 0)
        return;
    if (mapping_changed(sa, &m) && !(ike_task_queued(sa, IKE_TASK_MOBIKE) && sa->mobike.fo_update)) {
        LOG_INFO(sa->log, "ike", "the NAT mapping in front of us changed: updating the SA addresses "
                 "with %s (MOBIKE)", sa->gw_text);
        queue_update(sa, "NAT mapping changed", false);
    }
}

int ike_sa_update_addresses(ike_sa *sa, const struct sockaddr_storage *local, socklen_t local_len,
                            const char *reason)
{
    if (sa->state != IKE_SA_ESTABLISHED)
        return M2MVPN_E_STATE;
    if (!active(sa))
        return M2MVPN_E_NOTSUPP;
    if (local && local_len <= sizeof(sa->cfg.local)) {
        memset(&sa->cfg.local, 0, sizeof(sa->cfg.local));
        memcpy(&sa->cfg.local, local, local_len);
        sa->cfg.local_len = local_len;
    }
    if (sa->req.task == IKE_TASK_NONE) {
        queue_update(sa, reason && *reason ? reason : "our address changed", true);
        ike_task_run(sa);
        return 0;
    }
    /* A request is under way, most likely lost on the old path: send it
     * again now, from the new one, rather than at its next retransmission
     * (window size 1, RFC 7296 §2.3: it must be answered before another
     * goes). An update under way is that request: its answer moves the SAs
     * to the address it arrives from; another one is followed by ours. */
    if (sa->req.task == IKE_TASK_MOBIKE) {
        sa->mobike.update_ours = true;
        if (sa->mobike.fo_update) { /* the failover's update: it stays that too */
            char why[sizeof(sa->mobike.reason)];
            snprintf(why, sizeof(why), "%s; %s", reason && *reason ? reason : "our address changed",
                     sa->mobike.reason);
            snprintf(sa->mobike.reason, sizeof(sa->mobike.reason), "%s", why);
        } else {
            snprintf(sa->mobike.reason, sizeof(sa->mobike.reason), "%s",
                     reason && *reason ? reason : "our address changed");
        }
    } else {
        queue_update(sa, reason && *reason ? reason : "our address changed", true);
    }
    LOG_INFO(sa->log, "ike", "request %u to %s again from the new path%s", sa->req.message_id, sa->gw_text,
             sa->req.task == IKE_TASK_MOBIKE ? "" : "; the address update follows");
    for (size_t i = 0; i < sa->req.n_dgram; i++)
        ike_sa_send_dgram(sa, sa->req.buf + sa->req.dgram[i].off, sa->req.dgram[i].len, sa->req.natt);
    return 0;
}

static ike_task_status update_build(ike_sa *sa)
{
    uint8_t inner[256];
    buf_writer w;
    buf_writer_init(&w, inner, sizeof(inner));
    ike_chain_writer cw;
    ike_chain_writer_init(&cw, &w, SIZE_MAX);
    ike_build_notify(&cw, IKE_PROTO_NONE, IKE_N_UPDATE_SA_ADDRESSES, NULL, 0, NULL, 0);
    int r = build_natd(sa, &cw);
    if (r == 0)
        r = crypto_random(sa->mobike.cookie2, sizeof(sa->mobike.cookie2));
    if (r == 0)
        ike_build_notify(&cw, IKE_PROTO_NONE, IKE_N_COOKIE2, NULL, 0, sa->mobike.cookie2, sizeof(sa->mobike.cookie2));
    ike_chain_writer_finish(&cw);
    if (r == 0 && !ike_chain_writer_ok(&cw))
        r = M2MVPN_E_INVAL;
    if (r == 0) {
        char to[64];
        if (sa->mobike.fo_update)
            ike_sa_format_addr(&sa->mobike.fo_to, to, sizeof(to));
        else
            snprintf(to, sizeof(to), "%s", sa->gw_text);
        LOG_INFO(sa->log, "ike", "updating SA addresses with %s (MOBIKE: %s)", to, sa->mobike.reason);
        sa->mobike.fo_probing = sa->mobike.fo_update; /* the failover's update goes to its address only */
        r = ike_sa_send_protected(sa, IKE_EXCH_INFORMATIONAL, false, sa->next_msg_id, inner, buf_writer_len(&w),
                                  cw.first_type, IKE_TASK_MOBIKE);
        sa->req.failover = r == 0 && sa->mobike.fo_update;
    }
    if (r < 0 && sa->mobike.fo_update) {
        sa->mobike.fo_update = false;
        sa->mobike.fo_probing = false;
        ike_sa_fail_local(sa, r, "%s; cannot send UPDATE_SA_ADDRESSES (%s)", sa->mobike.reason, core_strerror(r));
    } else if (r < 0 && sa->hooks.on_addresses_updated) {
        char why[160];
        snprintf(why, sizeof(why), "cannot send UPDATE_SA_ADDRESSES (%s)", core_strerror(r));
        sa->hooks.on_addresses_updated(sa->hooks.arg, r, sa->mobike.update_ours, why);
    }
    return r < 0 ? IKE_TASK_FAILED : IKE_TASK_NEED_MORE;
}

/* The answer to UPDATE_SA_ADDRESSES: authenticated (sa.c opened it), and it
 * must echo our COOKIE2 (§3.5 return routability: an answer to another
 * request, or a replay, does not confirm this path). For the failover's
 * update (fo_to tentative) success makes fo_to the gateway's address,
 * anything else ends the SA. */
static ike_task_status update_process(ike_sa *sa, const ike_message *msg, const ike_chain *c)
{
    (void)msg;
    bool failover = sa->req.failover;
    char gw[64];
    if (failover)
        ike_sa_format_addr(&sa->mobike.fo_to, gw, sizeof(gw));
    else
        snprintf(gw, sizeof(gw), "%s", sa->gw_text);
    ike_mobike_info m;
    ike_diag d;
    ike_diag_clear(&d);
    char why[256] = "";
    int err = 0;
    if (ike_mobike_scan(c, &m, &d) < 0) {
        err = M2MVPN_E_PROTOCOL;
        snprintf(why, sizeof(why), "malformed answer to UPDATE_SA_ADDRESSES: %s", d.text);
    } else if (m.error) {
        err = M2MVPN_E_PROTOCOL;
        snprintf(why, sizeof(why), "gateway %s refused the new address (%s)", gw, ike_notify_name(m.error));
    } else if (!m.has_cookie2 || m.cookie2.len != sizeof(sa->mobike.cookie2) ||
               !crypto_memeq(m.cookie2.p, sa->mobike.cookie2, sizeof(sa->mobike.cookie2))) {
        err = M2MVPN_E_PROTOCOL;
        snprintf(why, sizeof(why), "gateway %s answered UPDATE_SA_ADDRESSES without our COOKIE2", gw);
    }
    if (failover && err) {
        /* IKE must not stay on an address whose update failed while ESP
         * stays on the dead one: the SA ends, lib/conn reconnects. */
        ike_sa_fail(sa, err, "%s, but the update there failed: %s", sa->mobike.reason, why);
        return IKE_TASK_FAILED;
    }
    if (err == 0) {
        if (failover)
            failover_commit(sa);
        mapping_changed(sa, &m); /* the new baseline */
        uint8_t ours[IKE_NATD_LEN];
        bool nat = m.has_natd_dst &&
                   (ike_natd_hash(sa, sa->spi_r, &sa->cfg.local, ours) < 0 ||
                    memcmp(ours, m.natd_dst, sizeof(ours)) != 0);
        sa->nat_here = nat;
        take_addresses(sa, &m);
        snprintf(why, sizeof(why), "%s; gateway %s moved the SAs%s", sa->mobike.reason, sa->gw_text,
                 nat ? " (NAT in front of us: UDP 4500 encapsulation)" : "");
        LOG_INFO(sa->log, "ike", "%s", why);
    } else {
        LOG_WARN(sa->log, "ike", "%s", why);
    }
    if (sa->hooks.on_addresses_updated)
        sa->hooks.on_addresses_updated(sa->hooks.arg, err, sa->mobike.update_ours, why);
    return err ? IKE_TASK_FAILED : IKE_TASK_DONE;
}

const ike_task_ops ike_task_mobike = {
    .kind = IKE_TASK_MOBIKE,
    .build = update_build,
    .process = update_process,
};
