/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The IKEv2 initiator (RFC 7296): one IKE SA with its first CHILD SA, as the
 * connection supervisor (lib/conn) drives it.
 *
 * The SA does no I/O of its own: it hands finished datagrams to hooks->send
 * (on port 500 until NAT traversal moves it to 4500; the hook adds the
 * non-ESP marker there) and receives datagrams through ike_sa_input(). Timers
 * (retransmission, DPD) run on the engine's core_loop. Everything runs on the
 * engine thread.
 *
 * Exchanges are tasks (IKE_SA_INIT, IKE_AUTH, INFORMATIONAL) with a build and
 * a process step; the SA state changes only in ike_sa_set_state(), which logs
 * "A -> B". Results leave through the hooks:
 *   on_established  the IKE SA and its CHILD SA are up: keys and network
 *                   parameters for the ESP datapath (wiped after the call)
 *   on_child_rekeyed  a CREATE_CHILD_SA exchange replaced the CHILD SA
 *                   old_spi_in (RFC 7296 §2.8): install the new one now,
 *                   make-before-break. outbound: use it for sending at once
 *                   (we initiated, the gateway has its inbound half); false:
 *                   inbound only, the old SA keeps sending until
 *                   on_child_deleted(old) (the gateway initiated: it starts
 *                   sending on the new SA first, §2.8). keymat as in
 *                   on_established; the network fields are empty (unchanged).
 *   on_child_deleted  a CHILD SA reported by on_child_rekeyed (or the one it
 *                   replaced) is gone: remove it from the datapath. After
 *                   on_down only the current CHILD SA is left to remove.
 *   on_ike_rekeyed  the IKE SA was replaced by a new one (§2.18); informative.
 *   on_down         the SA failed or was closed: error 0 when we closed it on
 *                   purpose, M2MVPN_E_PROTOCOL when the gateway deleted it,
 *                   else why it failed, and whose fault it is (ike_fault);
 *                   the SA must then be freed.
 */
#ifndef M2MVPN_IKE_H
#define M2MVPN_IKE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "core/log.h"
#include "core/loop.h"
#include "cred/cred.h"
#include "crypto/pki.h"
#include "profile/profile.h"

#define IKE_MAX_DNS 4

/* What the CHILD SA negotiation produced, for the ESP datapath. */
typedef struct ike_child_result {
    uint32_t spi_in;               /* ours: the gateway sends ESP with it */
    uint32_t spi_out;              /* the gateway's: we send with it */
    uint16_t encr_id, encr_key_bits, integ_id;
    bool esn;
    const uint8_t *keymat;         /* encr_i|integ_i|encr_r|integ_r (RFC 7296 §2.17) as for an
                                    * exchange we initiated: what we send with first (swapped
                                    * when the gateway initiated the rekey) */
    size_t keymat_len;
    bool has_vip;
    uint8_t vip[4];                /* INTERNAL_IP4_ADDRESS */
    uint8_t dns[IKE_MAX_DNS][4];   /* INTERNAL_IP4_DNS */
    size_t n_dns;
    bool has_vip6;
    uint8_t vip6[16];              /* INTERNAL_IP6_ADDRESS ... */
    uint8_t vip6_prefix_len;       /* ... and its prefix length (1..128) */
    uint8_t dns6[IKE_MAX_DNS][16]; /* INTERNAL_IP6_DNS */
    size_t n_dns6;
    profile_ts remote_ts[PROFILE_MAX_TS]; /* TSr as narrowed by the gateway */
    size_t n_remote_ts;
    profile_ts local_ts[PROFILE_MAX_TS];  /* TSi as narrowed by the gateway (our side) */
    size_t n_local_ts;
    bool natt;                     /* ESP goes in UDP on port 4500 */
} ike_child_result;

/* Where a failure comes from. The error code alone does not say it: an
 * M2MVPN_E_INVAL may be our profile's or a key length the gateway (or anyone
 * who forged its unauthenticated IKE_SA_INIT answer) chose. */
typedef enum ike_fault {
    IKE_FAULT_PEER,   /* what the gateway sent or did (authenticated or not), or
                       * its silence: another attempt may succeed */
    IKE_FAULT_LOCAL,  /* our side: the profile, a credential or key we hold, a
                       * PIN, this build lacking what the profile asks for */
} ike_fault;

const char *ike_fault_name(ike_fault f);

typedef struct ike_hooks {
    void *arg;
    /* Send one datagram to the gateway; natt: port 4500 with non-ESP marker. */
    int (*send)(void *arg, const uint8_t *msg, size_t len, bool natt);
    void (*on_established)(void *arg, const ike_child_result *child);
    void (*on_down)(void *arg, int err, ike_fault fault, const char *detail);
    /* Optional (NULL: rekeys of the CHILD SA are refused, as before). */
    void (*on_child_rekeyed)(void *arg, uint32_t old_spi_in, const ike_child_result *child,
                             bool outbound);
    void (*on_child_deleted)(void *arg, uint32_t spi_in);
    void (*on_ike_rekeyed)(void *arg);
    /* Optional: an UPDATE_SA_ADDRESSES exchange (MOBIKE) ended: err 0 when
     * the gateway moved the IKE and CHILD SAs to our current address (the
     * datapath needs nothing more: the gateway's address is unchanged),
     * else why not (the SA itself is still up; what to do is the
     * supervisor's choice). ours: we asked for it (ike_sa_update_addresses);
     * false: lib/ike did, after a NAT mapping change showed in a liveness
     * check. */
    void (*on_addresses_updated)(void *arg, int err, bool ours, const char *detail);
    /* Optional (NULL: no gateway failover): send one datagram to `to` (port
     * 4500, non-ESP marker) rather than where `send` goes. Used once the
     * gateway's current address stops answering under MOBIKE: the request
     * goes to its other addresses (ADDITIONAL_*_ADDRESS) in turn; the first
     * authenticated answer from the address it went to (ike_sa_input_from)
     * sends UPDATE_SA_ADDRESSES there; its successful answer makes that
     * address the gateway's, on_addresses_updated(0, ours false, or true
     * when a move of ours was queued too) reports it: ike_sa_peer() then
     * differs from before. That update failing or unanswered ends the SA
     * (on_down), the gateway's address unchanged. */
    int (*send_to)(void *arg, const uint8_t *msg, size_t len, const struct sockaddr *to, socklen_t to_len);
} ike_hooks;

typedef struct ike_config {
    const profile *prof;           /* borrowed: must outlive the SA */
    struct sockaddr_storage local; /* our address/port on the port-500 socket */
    socklen_t local_len;
    struct sockaddr_storage remote;     /* the gateway, port 500 */
    socklen_t remote_len;
    cred_provider *cred;           /* borrowed; NULL unless auth.method is cert */
    pki_trust *trust;              /* borrowed; anchors from the profile's "ca" */
    /* auth.method "eap": the user name and password to use (borrowed, from
     * the profile or m2mvpn_set_credentials; the SA keeps no copy beyond
     * its EAP exchange, wiped when it ends). */
    const char *eap_identity;
    const char *eap_password;
    size_t eap_password_len;
    /* Reauthentication (RFC 7296 §2.8.3, make-before-break): the IKE SA that
     * this one replaces stays up until this one carries the traffic, so no
     * INITIAL_CONTACT, and the virtual IPs it has are asked for again (the
     * gateway may keep them: the tunnel's addresses need not change). */
    bool reauth;
    bool want_vip, want_vip6;
    uint8_t vip[4], vip6[16];
} ike_config;

typedef struct ike_sa ike_sa;

/* Create an SA (idle). Errors: INVAL, NOMEM, CRYPTO; err says why. */
int ike_sa_new(core_loop *loop, core_log *log, const ike_config *cfg, const ike_hooks *hooks,
               ike_sa **ret, char *err, size_t err_len);
/* Send IKE_SA_INIT (once: E_STATE after); failures arrive through on_down. */
int ike_sa_start(ike_sa *sa);
/* A datagram from the gateway (without the non-ESP marker); natt: it came
 * on port 4500, where no IKE_SA_INIT answer is taken (it comes to the
 * port-500 socket that sent the request). */
void ike_sa_input(ike_sa *sa, const uint8_t *msg, size_t len, bool natt);
/* The same with the datagram's source (from NULL: unknown). While a request
 * goes to another address of the gateway (failover), only an answer from
 * that address counts; an IKE_SA_INIT answer only from cfg.remote. */
void ike_sa_input_from(ike_sa *sa, const uint8_t *msg, size_t len, bool natt, const struct sockaddr *from,
                       socklen_t from_len);
/* Delete the IKE SA (INFORMATIONAL with Delete, not waiting long); on_down(0) follows. */
void ike_sa_close(ike_sa *sa);
/* Rekey the CHILD SA whose inbound SPI is spi_in (CREATE_CHILD_SA, with PFS
 * when the profile's first ESP proposal has a key exchange). 0 when started
 * or already under way; M2MVPN_E_STATE when the SA is not established or
 * spi_in is not its current CHILD SA. Failures are retried; the outcome
 * arrives through on_child_rekeyed. */
int ike_sa_rekey_child(ike_sa *sa, uint32_t spi_in);
/* Rekey the IKE SA now (it also happens by itself before ike.lifetime_s
 * ends). Errors: M2MVPN_E_STATE (not established). */
int ike_sa_rekey_ike(ike_sa *sa);
/* MOBIKE (RFC 4555). Did both sides announce it (IKE_AUTH)? */
bool ike_sa_mobike(const ike_sa *sa);
/* A reauthentication replaced `from` by `sa`: the gateway's other addresses
 * (MOBIKE) carry over unless the new IKE_AUTH listed them anew. */
void ike_sa_mobike_inherit(ike_sa *sa, const ike_sa *from);
/* Our address changed (local: the new one the kernel picks towards the
 * gateway): INFORMATIONAL {UPDATE_SA_ADDRESSES, NAT detection, COOKIE2},
 * sent at once from whatever the sending hook uses now. A request under
 * way is sent again at once instead (it was likely lost on the old path);
 * the update follows its answer, or is that request. The outcome comes through on_addresses_updated; no answer
 * at all ends the SA as any request does (on_down, TIMEOUT). reason: for the
 * hook's detail. Errors: M2MVPN_E_NOTSUPP (no MOBIKE with this gateway),
 * M2MVPN_E_STATE (not established). */
int ike_sa_update_addresses(ike_sa *sa, const struct sockaddr_storage *local, socklen_t local_len,
                            const char *reason);
/* The gateway's additional addresses (ADDITIONAL_IP4/6_ADDRESS from
 * authenticated messages only), for failover; returns how many (<= max). */
size_t ike_sa_peer_addresses(const ike_sa *sa, struct sockaddr_storage *out, size_t max);
/* The gateway's address now (port 500): the configured one, or the one a
 * failover moved to (see send_to). */
void ike_sa_peer(const ike_sa *sa, struct sockaddr_storage *out, socklen_t *out_len);
/* Cancel timers, wipe keys, free. NULL is fine. Never calls hooks. */
void ike_sa_free(ike_sa *sa);

/* Replace the hooks (lib/conn: the SA a reauthentication replaces gets
 * other hooks than the one the tunnel uses). */
void ike_sa_set_hooks(ike_sa *sa, const ike_hooks *hooks);
/* True if msg (an IKE header at least) belongs to this SA: its initiator
 * SPI is ours. For several SAs behind one socket. */
bool ike_sa_owns(const ike_sa *sa, const uint8_t *msg, size_t len);
/* Our inbound SPI of the CHILD SA this IKE SA's IKE_AUTH creates (chosen
 * when the SA is made, before anything is sent). */
uint32_t ike_sa_child_spi_in(const ike_sa *sa);

/* Negotiated algorithms, "aes256gcm16-prfsha384-x25519" style, for status. */
void ike_sa_describe(const ike_sa *sa, char *ike_alg, size_t ike_len, char *esp_alg, size_t esp_len);

#endif
