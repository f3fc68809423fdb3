/* SPDX-License-Identifier: Apache-2.0 */
/* MOBIKE notifies (RFC 4555 §4) and NAT detection data: see codec.h. */
#include <string.h>
#include <sys/socket.h>

#include <m2mvpn/m2mvpn.h>

#include "codec.h"

#define BAD(diag, ...) ike_diag_set((diag), M2MVPN_E_PROTOCOL, IKE_N_INVALID_SYNTAX, IKE_PL_NOTIFY, __VA_ARGS__)

/* An address a peer may ask us to use (RFC 4555 §4.2.2 leaves out what is
 * not reachable from elsewhere): not unspecified, loopback, multicast or
 * link-local; no IPv6 address standing for an IPv4 one (IPv4-mapped
 * ::ffff:0:0/96, IPv4-compatible ::/96: our dual-stack socket would send
 * ::ffff:127.0.0.1 to loopback; an IPv4 address comes as ADDITIONAL_IP4_ADDRESS). */
static bool usable(const ike_mobike_addr *a)
{
    const uint8_t *p = a->addr;
    if (a->family == AF_INET)
        return !(p[0] == 0 || p[0] == 127 || p[0] >= 224 || (p[0] == 169 && p[1] == 254));
    static const uint8_t zero[16], mapped[12] = { [10] = 0xff, [11] = 0xff };
    return memcmp(p, zero, 12) != 0 && memcmp(p, mapped, 12) != 0 && p[0] != 0xff &&
           !(p[0] == 0xfe && (p[1] & 0xc0) == 0x80);
}

static int take_address(ike_mobike_info *m, const ike_notify *n, ike_diag *diag)
{
    bool v6 = n->type == IKE_N_ADDITIONAL_IP6_ADDRESS;
    size_t want = v6 ? 16 : 4;
    if (n->data.len != want)
        return BAD(diag, "ADDITIONAL_IP%d_ADDRESS: %zu bytes, must be %zu", v6 ? 6 : 4, n->data.len, want);
    ike_mobike_addr a = { .family = v6 ? AF_INET6 : AF_INET };
    memcpy(a.addr, n->data.p, want);
    if (!usable(&a))
        return BAD(diag, "ADDITIONAL_IP%d_ADDRESS: not an address a peer can be reached at", v6 ? 6 : 4);
    if (m->n_addrs == IKE_MOBIKE_MAX_ADDRS) {
        m->n_addrs_skipped++;
        return 0;
    }
    m->addrs[m->n_addrs++] = a;
    return 0;
}

int ike_mobike_scan(const ike_chain *c, ike_mobike_info *ret, ike_diag *diag)
{
    ike_mobike_info m;
    memset(&m, 0, sizeof(m));
    for (const ike_payload *p = ike_chain_find(c, IKE_PL_NOTIFY, NULL); p; p = ike_chain_find(c, IKE_PL_NOTIFY, p)) {
        ike_notify n;
        int rc = ike_notify_parse(p->body, &n, diag);
        if (rc < 0)
            return rc;
        switch (n.type) {
        case IKE_N_MOBIKE_SUPPORTED:
        case IKE_N_UPDATE_SA_ADDRESSES:
        case IKE_N_NO_ADDITIONAL_ADDRESSES:
            if (n.data.len != 0)
                return BAD(diag, "%s with %zu bytes of data, must be empty", ike_notify_name(n.type), n.data.len);
            if (n.type == IKE_N_MOBIKE_SUPPORTED)
                m.supported = true;
            else if (n.type == IKE_N_UPDATE_SA_ADDRESSES)
                m.update = true;
            else
                m.no_additional = true;
            break;
        case IKE_N_ADDITIONAL_IP4_ADDRESS:
        case IKE_N_ADDITIONAL_IP6_ADDRESS:
            if ((rc = take_address(&m, &n, diag)) < 0)
                return rc;
            break;
        case IKE_N_COOKIE2:
            if (n.data.len < IKE_COOKIE2_MIN || n.data.len > IKE_COOKIE2_MAX)
                return BAD(diag, "COOKIE2: %zu bytes, must be %d..%d", n.data.len, IKE_COOKIE2_MIN, IKE_COOKIE2_MAX);
            if (!m.has_cookie2) {
                m.has_cookie2 = true;
                m.cookie2 = n.data;
            }
            break;
        case IKE_N_NAT_DETECTION_SOURCE_IP:
        case IKE_N_NAT_DETECTION_DESTINATION_IP: {
            bool src = n.type == IKE_N_NAT_DETECTION_SOURCE_IP;
            if (n.data.len != IKE_NATD_LEN)
                return BAD(diag, "%s: %zu bytes, must be %d", ike_notify_name(n.type), n.data.len, IKE_NATD_LEN);
            bool *have = src ? &m.has_natd_src : &m.has_natd_dst;
            if (!*have) {
                *have = true;
                memcpy(src ? m.natd_src : m.natd_dst, n.data.p, IKE_NATD_LEN);
            }
            break;
        }
        case IKE_N_UNACCEPTABLE_ADDRESSES:
        case IKE_N_UNEXPECTED_NAT_DETECTED:
        case IKE_N_NO_NATS_ALLOWED:
            if (!m.error)
                m.error = n.type;
            break;
        default:
            break;
        }
    }
    if (m.no_additional && m.n_addrs) {
        return BAD(diag, "NO_ADDITIONAL_ADDRESSES next to %zu ADDITIONAL_*_ADDRESS", m.n_addrs);
    }
    *ret = m;
    return 0;
}

void ike_build_additional_address(ike_chain_writer *cw, const ike_mobike_addr *a)
{
    bool v6 = a->family == AF_INET6;
    ike_build_notify(cw, IKE_PROTO_NONE, v6 ? IKE_N_ADDITIONAL_IP6_ADDRESS : IKE_N_ADDITIONAL_IP4_ADDRESS, NULL, 0,
                     a->addr, v6 ? 16 : 4);
}
