/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Userspace ESP datapath: ESP (RFC 4303) tunnel mode inside UDP (RFC 3948) on
 * the port shared with IKE (4500), with packets from and to a TUN device.
 * The kernel here has no ESP, and embedded targets often lack or lock it down.
 *
 * Three layers, usable on their own:
 *
 *  1. esp_replay_*  the anti-replay window (RFC 4303 §3.4.3 and Appendix A,
 *                   ESN aware). Check BEFORE the integrity check, advance only
 *                   AFTER it (as Linux xfrm_replay does), so forged packets
 *                   cannot move the window.
 *  2. esp_sa_*      one CHILD SA's crypto: encapsulate an inner IP packet into
 *                   an ESP packet (SPI..ICV) and back. OpenSSL 3 EVP contexts
 *                   are prepared once per SA and direction; nothing is
 *                   allocated per packet. Ciphers: AES-GCM-16 128/256 (RFC
 *                   4106), ChaCha20-Poly1305 (RFC 7634), AES-CBC 128/256 with
 *                   HMAC-SHA2-256-128/384-192/512-256 (RFC 4868).
 *  3. esp_datapath_* the running datapath: one UDP socket (shared with IKE via
 *                   the non-ESP marker), a TUN device with address, MTU and
 *                   routes (libnl-route-3), the kill switch, two worker threads
 *                   (TUN->UDP encrypt, UDP->TUN decrypt), NAT keepalives and a
 *                   thread-safe handoff to the engine thread.
 *
 * Threads: the engine thread owns the esp_datapath handle and is the only one
 * that calls esp_datapath_* (except esp_datapath_get_counters and
 * esp_datapath_get_sa_counters, callable from any thread). The worker threads never call into the engine: IKE packets,
 * rekey requests and errors are queued and an eventfd that the engine's
 * core_loop watches (esp_datapath_attach) is signalled; the callbacks then run
 * on the engine thread.
 *
 * Routes by policy. The routes for the remote traffic selectors live in a
 * routing table of our own (esp_tunnel_table(tun name), one per TUN name),
 * selected by a rule `not fwmark TABLE lookup TABLE` at ESP_RULE_PRIORITY,
 * ahead of the main table, per address family. The table holds only the
 * protected prefixes, so everything else falls through to the main table as
 * before; for a protected destination the main table is never consulted, and
 * no route added there (a DHCP option 121 route, an overlapping LAN: the
 * TunnelVision and TunnelCrack LocalNet attacks) can take the traffic. A full
 * tunnel is a plain default route in our table. Our own IKE and ESP sockets
 * carry the fwmark (SO_MARK = the table number), skip the rule and reach the
 * gateway through the main table even when it lies inside a protected prefix.
 *
 * Kill switch (tunnel.kill_switch, default on). Plaintext for a protected
 * network must never leave the underlay, also while reconnecting, without SA,
 * or after the engine died (SIGKILL). Mechanism:
 *  - the routes for the remote traffic selectors point into the TUN and stay
 *    there while no SA is installed; packets read from the TUN without an
 *    outbound SA, or whose destination no remote traffic selector covers,
 *    are dropped and counted (ESP_DROP_NO_SA);
 *  - the TUN is made persistent (TUNSETPERSIST): when the process dies, the
 *    kernel keeps the device, its address, our table and rule; with no
 *    reader the TUN drops what is routed into it;
 *  - for every TUN route a blackhole route for the same prefix is added to
 *    our table with a higher metric (ESP_KILL_SWITCH_METRIC_OFFSET); if the
 *    TUN itself is deleted, the blackhole still catches the traffic;
 *  - where the kernel has nf_tables (and the build libnftables), a table
 *    `inet m2mvpn_<tun>` drops packets for the protected prefixes leaving by
 *    any interface but the TUN (and lo), except our own marked UDP to the
 *    IKE ports (500, 4500, esp_tunnel_net.ike_ports): this also holds
 *    against what bypasses routing rules (a socket bound to another
 *    interface, a rule ahead of ours). It also drops whatever has a virtual
 *    IP as its source leaving by another interface, and a table
 *    `arp m2mvpn_<tun>` ARP requests naming the IPv4 one (a socket bound to
 *    a link that lost its address, after a roam, would otherwise ask that
 *    link for the gateway with it). Without it (esp_kill_switch_info
 *    .nftables false) lib/conn refuses the kill switch unless the profile
 *    accepts routing alone (tunnel.kill_switch_routing_only);
 *  - only esp_datapath_teardown(dp, true) removes the routes, blackholes,
 *    rules, nftables table, addresses and the persistent device, i.e. when
 *    the profile is removed on purpose. esp_datapath_free() without teardown
 *    leaves the kill switch in place. A new datapath with the same TUN name
 *    re-attaches to a leftover persistent TUN, adopts the routes of our
 *    table and replaces the rule and nftables table.
 * With kill_switch off the TUN is not persistent, no blackholes and no
 * nftables table are added and esp_datapath_free() removes everything (the
 * routes still live in our table, behind the rule).
 *
 * Errors are 0 or negative M2MVPN_E_*; functions that take (err, err_len) write
 * a human reason there on failure (never a key).
 */
#ifndef M2MVPN_ESP_H
#define M2MVPN_ESP_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <m2mvpn/m2mvpn.h>

#include "../core/loop.h"

/* --------------------------------------------------------------- limits */

#define ESP_MAX_ENCR_KEY   36   /* AES-256 / ChaCha20 key + 4-byte salt */
#define ESP_MAX_INTEG_KEY  64   /* HMAC-SHA2-512 */
#define ESP_REPLAY_DEFAULT 1024 /* packets */
#define ESP_REPLAY_MAX     65536
#define ESP_UDP_PORT       4500
/* Largest UDP datagram read without UDP GRO. IKE messages larger than this
 * (unfragmented, IP-reassembled) are dropped; use IKE fragmentation (RFC 7383). */
#define ESP_MAX_PACKET     16384
/* Largest TUN MTU the datapath's preallocated send slots take (no jumbo). */
#define ESP_MAX_TUN_MTU    1952
/* Batch depth of the TUN -> ESP side: packets gathered (read from the TUN,
 * or cut from a TSO super-packet) before they are encrypted and sent in one
 * go. Each costs a 2 KiB slot, touched only under load. */
#define ESP_BATCH_DEFAULT  32
#define ESP_BATCH_MAX      128
/* Prefixes a tunnel protects: as many as a profile may list
 * (PROFILE_MAX_TS, checked in lib/conn); a full tunnel is one prefix. */
#define ESP_MAX_TS         16
#define ESP_MAX_DNS        4
/* Gateways' IKE ports a tunnel knows (a profile lists at most 8 gateways). */
#define ESP_MAX_IKE_PORTS  8
/* Blackhole routes sit this far below (metric above) the TUN routes. */
#define ESP_KILL_SWITCH_METRIC_OFFSET 100
/* Priority of our policy rule: ahead of the main (32766) and default
 * tables, and ahead of what other software adds on its own (wg-quick 32764
 * and 32765, Tailscale from 5210, Android-style policy routing from 10000),
 * so none of it decides before us for a protected prefix; priorities below
 * are left to an administrator's deliberate exceptions, and 0 is the local
 * table. Every TUN's rule has this priority (each looks up its own table). */
#define ESP_RULE_PRIORITY 1000
/* Our routing tables are ESP_TABLE_BASE + 8 bits of a hash of the TUN name
 * (4096..4351): one table per TUN name, the same after a restart (so a new
 * engine finds what the old one left), without a registry. The number is
 * also the fwmark of our own sockets, so its bits must mean nothing to
 * other software that tests marks under a mask: it uses only the bits
 * 0x10ff, clear of Kubernetes (kube-proxy 0x4000 masquerade, 0x8000 drop),
 * Cilium (0x0f00, and 0xffff0000 for identities), Tailscale (0xff0000),
 * Calico (0xffff0000 by default) and Weave (0x20000, 0x40000). Exact
 * values of others differ from ours: wg-quick 51820 (0xca6c), Istio 1337,
 * Tailscale table 52, strongSwan table 220, Calico's and Cilium's tables
 * (1..250, 2004, 2005). Two TUN names meeting in one table is detected
 * (esp_datapath_new fails: rename one). */
#define ESP_TABLE_BASE 0x1000u
#define ESP_TABLE_HASH_MASK 0xffu

/* ESP next-header values (IANA protocol numbers). */
enum { ESP_NH_IPV4 = 4, ESP_NH_IPV6 = 41, ESP_NH_DUMMY = 59 };

/* ------------------------------------------------------- drop reasons */

#define ESP_DROP_MAP(XX)                                                  \
    XX(REPLAY,    "replayed or too old sequence number")                  \
    XX(INTEGRITY, "integrity check failed")                               \
    XX(NO_SA,     "no SA for the packet")                                 \
    XX(MALFORMED, "malformed packet (length, padding, next header)")      \
    XX(DUMMY,     "dummy packet (next header 59)")                        \
    XX(SEQ_EXHAUSTED, "sequence numbers exhausted, SA may not send")      \
    XX(LIFETIME,  "hard lifetime reached")                                \
    XX(TOO_BIG,   "packet larger than the buffers")                       \
    XX(SELECTOR,  "inner source or destination outside the negotiated traffic selectors")

typedef enum esp_drop_reason {
#define ESP_XX_ENUM(name, text) ESP_DROP_##name,
    ESP_DROP_MAP(ESP_XX_ENUM)
#undef ESP_XX_ENUM
    ESP_DROP__COUNT
} esp_drop_reason;

/* "replay", "integrity", ... (lower case); "?" for others. */
const char *esp_drop_reason_name(esp_drop_reason r);

/* ------------------------------------------------------- anti-replay */

/*
 * Sliding window over the highest authenticated sequence number. With ESN the
 * 32 high bits are not sent; they are inferred from the window (RFC 4303
 * Appendix A2.2) and go into the ICV/AAD, so a wrong guess fails integrity.
 * `size` is rounded up to a multiple of 64. Not thread-safe: one inbound
 * thread owns it.
 */
typedef struct esp_replay_window {
    uint64_t top;        /* highest authenticated 64-bit sequence number (0 = none) */
    uint32_t size;       /* window size in packets, 0 = replay check off */
    bool esn;
    uint64_t *bitmap;    /* size/64 words, ring indexed by seq % size */
} esp_replay_window;

/* Allocates the bitmap. size 0 disables the check (every seq passes).
 * Errors: INVAL (size > ESP_REPLAY_MAX), NOMEM. */
int esp_replay_init(esp_replay_window *w, uint32_t size, bool esn);
void esp_replay_destroy(esp_replay_window *w);

/* Before the integrity check: is the received 32 low bits acceptable? On true
 * *seq_full is the inferred 64-bit sequence number (high bits 0 without ESN)
 * to authenticate with. seq 0 is never valid without ESN. Does not modify w. */
bool esp_replay_check(const esp_replay_window *w, uint32_t seq_lo, uint64_t *seq_full);

/* After the integrity check passed: mark seq_full as seen, slide the window.
 * Returns false (and changes nothing) if seq_full was seen or fell out of the
 * window meanwhile. */
bool esp_replay_advance(esp_replay_window *w, uint64_t seq_full);

/* ------------------------------------------------------------- one SA */

/* One direction's keys. For AEAD (GCM, ChaCha20-Poly1305) `encr` holds key
 * followed by the 4-byte salt, as taken from KEYMAT (RFC 4106 §8.1, RFC 7634
 * §2); `integ` is empty. For AES-CBC, `encr` is the AES key and `integ` the
 * HMAC key. */
typedef struct esp_sa_keys {
    uint8_t encr[ESP_MAX_ENCR_KEY];
    size_t encr_len;
    uint8_t integ[ESP_MAX_INTEG_KEY];
    size_t integ_len;
} esp_sa_keys;

/* Lifetimes; 0 means none. Soft raises a rekey request, hard stops the SA. */
typedef struct esp_lifetime {
    uint64_t soft_bytes, hard_bytes;      /* inner bytes, each direction counted */
    uint64_t soft_packets, hard_packets;  /* inner packets, each direction counted */
    uint32_t soft_seconds, hard_seconds;  /* since esp_sa_new */
} esp_lifetime;

typedef struct esp_sa_config {
    uint32_t spi_in;           /* ours: peers send with it */
    uint32_t spi_out;          /* theirs: we send with it */
    uint16_t encr_id;          /* ENCR_* of lib/core/iana.h */
    uint16_t encr_key_bits;    /* 128/256 (256 for ChaCha20-Poly1305) */
    uint16_t integ_id;         /* AUTH_HMAC_SHA2_* or 0 for AEAD */
    bool esn;                  /* extended sequence numbers negotiated */
    uint32_t replay_window;    /* packets, 0 = off; set it from the profile's
                                * esp.replay_window (default ESP_REPLAY_DEFAULT) */
    esp_sa_keys key_in;        /* we decrypt with it (responder->initiator for us) */
    esp_sa_keys key_out;       /* we encrypt with it (initiator->responder for us) */
    esp_lifetime lifetime;
    /* esp_datapath_install_sa: receive only, the SA sending so far keeps
     * sending until it is removed (rekey responder, RFC 7296 §2.8). */
    bool inbound_only;
    /* Where this SA's packets go (UDP-encapsulated). */
    struct sockaddr_storage peer;
    socklen_t peer_len;
} esp_sa_config;

/* Bytes of KEYMAT one direction takes (encr key [+salt] + integ key), 0 if the
 * combination is not supported. */
size_t esp_keymat_len(uint16_t encr_id, uint16_t key_bits, uint16_t integ_id);

/*
 * Fill cfg->key_in/key_out from KEYMAT in RFC 7296 §2.17 order: encryption
 * key i->r, integrity key i->r, encryption key r->i, integrity key r->i.
 * `we_are_initiator` picks which half is outbound (of the CHILD SA's exchange).
 * cfg->encr_id/encr_key_bits/integ_id must be set. Errors: INVAL (length).
 */
int esp_keys_from_keymat(esp_sa_config *cfg, const uint8_t *keymat, size_t len,
                         bool we_are_initiator);

/* Counters of one SA (a snapshot). */
typedef struct esp_sa_counters {
    uint64_t packets_in, bytes_in;      /* delivered inner packets/bytes */
    uint64_t packets_out, bytes_out;    /* sent inner packets/bytes */
    uint64_t dropped[ESP_DROP__COUNT];
} esp_sa_counters;

typedef struct esp_sa esp_sa;

/* Create an SA: validates the algorithms and key lengths, prepares the EVP
 * contexts. The keys in *cfg are copied (caller wipes its copy). Errors: INVAL,
 * NOTSUPP (algorithm), NOMEM, CRYPTO. *ret untouched on failure. */
int esp_sa_new(const esp_sa_config *cfg, esp_sa **ret, char *err, size_t err_len);
/* Wipes keys and frees. NULL is fine. */
void esp_sa_free(esp_sa *sa);

uint32_t esp_sa_spi_in(const esp_sa *sa);
uint32_t esp_sa_spi_out(const esp_sa *sa);
/* SPI + sequence number + IV: where the encrypted payload starts. */
size_t esp_sa_header_len(const esp_sa *sa);
/* Bytes the ESP encapsulation adds at most (header, IV, padding, trailer, ICV). */
size_t esp_sa_overhead(const esp_sa *sa);
/* The same, before an SA exists (for the TUN MTU). 0 if unsupported. */
size_t esp_overhead(uint16_t encr_id, uint16_t integ_id);
/* Default inner MTU for an underlay MTU (IPv4 or IPv6 outer header + UDP +
 * ESP overhead of the cipher), e.g. 1438 for AES-GCM on a 1500 IPv4 underlay. */
uint32_t esp_default_mtu(uint16_t encr_id, uint16_t integ_id, uint32_t underlay_mtu,
                         bool ipv6_underlay);

/*
 * Encapsulate one inner packet (`inner` may equal out + esp_sa_header_len(sa):
 * in-place encryption, as the datapath does): writes SPI, sequence number, IV, encrypted
 * payload + padding + pad length + next header, and ICV into out (capacity
 * out_cap). Thread-safe against esp_sa_decap (separate contexts); only one
 * thread encapsulates on an SA at a time. Returns 0 and *out_len, or a
 * negative M2MVPN_E_* with *drop set: SEQ_EXHAUSTED / LIFETIME (SA may no
 * longer send; the rekey request was already raised) or TOO_BIG.
 */
int esp_sa_encap(esp_sa *sa, const uint8_t *inner, size_t inner_len, uint8_t next_header,
                 uint8_t *out, size_t out_cap, size_t *out_len, esp_drop_reason *drop);

/*
 * Decapsulate an ESP packet (SPI..ICV, no UDP header) in place. Order: length
 * and SPI, replay check, integrity/decryption, padding and next-header
 * validation, replay advance. On 0, *inner points into pkt (*inner_len bytes)
 * and *next_header is 4 or 41. Otherwise a negative M2MVPN_E_* and *drop says
 * why (dummy packets return DUMMY); the counters were updated either way.
 */
int esp_sa_decap(esp_sa *sa, uint8_t *pkt, size_t len, uint8_t **inner, size_t *inner_len,
                 uint8_t *next_header, esp_drop_reason *drop);

void esp_sa_get_counters(const esp_sa *sa, esp_sa_counters *out);

/* Rekey requests the SA raises (each at most once per SA). */
#define ESP_REKEY_MAP(XX)                                          \
    XX(SOFT_SEQ,    "sequence numbers nearly exhausted")            \
    XX(HARD_SEQ,    "sequence numbers exhausted")                   \
    XX(SOFT_BYTES,  "soft byte lifetime reached")                   \
    XX(HARD_BYTES,  "hard byte lifetime reached")                   \
    XX(SOFT_TIME,   "soft time lifetime reached")                   \
    XX(HARD_TIME,   "hard time lifetime reached")                   \
    XX(SOFT_PACKETS, "soft packet lifetime reached")                \
    XX(HARD_PACKETS, "hard packet lifetime reached")

typedef enum esp_rekey_reason {
#define ESP_XX_ENUM(name, text) ESP_REKEY_##name,
    ESP_REKEY_MAP(ESP_XX_ENUM)
#undef ESP_XX_ENUM
    ESP_REKEY__COUNT
} esp_rekey_reason;

const char *esp_rekey_reason_name(esp_rekey_reason r);
/* True for the HARD_* reasons: the SA no longer sends. */
bool esp_rekey_reason_is_hard(esp_rekey_reason r);

/* Poll pending rekey requests of an SA (bit i set = reason i newly raised);
 * clears them. Thread-safe. Also checks the time lifetimes against `now_ms`
 * (CLOCK_MONOTONIC ms). The datapath calls this; tests may too. */
uint32_t esp_sa_take_rekey_requests(esp_sa *sa, uint64_t now_ms);

/* True if rekey requests are waiting (does not clear them). Thread-safe. */
bool esp_sa_rekey_pending(esp_sa *sa);

/* Start the outbound sequence number at `next_seq` (tests: exhaustion). */
void esp_sa_set_next_seq(esp_sa *sa, uint64_t next_seq);

/* ------------------------------------------------------------ datapath */

typedef struct esp_prefix {
    int family;                /* AF_INET / AF_INET6 */
    uint8_t addr[16];
    uint8_t prefix_len;
} esp_prefix;

typedef struct esp_datapath_config {
    /* Underlay: local address the UDP socket binds to (port 0 -> 4500;
     * address any is fine). */
    struct sockaddr_storage local;
    socklen_t local_len;

    /* Tunnel */
    char tun_name[16];         /* IFNAMSIZ; "" -> "m2m0" */
    uint32_t mtu;              /* 0: esp_default_mtu of the SA cipher from 1500;
                                * at most ESP_MAX_TUN_MTU */
    bool kill_switch;          /* see the top of this file */
    uint32_t route_metric;     /* metric of the TUN routes; 0 -> 50 */
    bool configure_network;    /* false: just the TUN fd, no address/routes */
    char underlay_ifname[16];  /* optional SO_BINDTODEVICE for the UDP socket, so
                                * a 0.0.0.0/0 TUN route cannot catch our own
                                * ESP/IKE packets; "" = routing decides */
    /* Offloads. TUN (IFF_VNET_HDR, TSO4/6 + checksum): the kernel hands over
     * TCP super-packets that the datapath segments itself, and received TCP
     * segments are coalesced before they go up. UDP: runs of equal-sized ESP
     * packets leave in one UDP_SEGMENT (GSO) send, and UDP_GRO receives
     * coalesced datagrams. Fewer syscalls and one pass of the kernel's
     * network code per batch instead of per packet. On by default (measured:
     * about 4x the throughput of the plain path); true turns them off. */
    bool no_offload;
    /* Packets per TUN -> ESP batch: 0 -> ESP_BATCH_DEFAULT, at most
     * ESP_BATCH_MAX. Memory under load against syscalls per packet (a TSO
     * super-packet larger than the batch is cut and sent in several). */
    uint32_t batch;
    /* Worker threads (one encrypts, one decrypts: both cores). false: no
     * threads; after esp_datapath_attach the engine's own loop moves the
     * packets (single-threaded firmware), or a test calls esp_datapath_poll_*. */
    bool threads;
} esp_datapath_config;

/* Network setup handed over by the IKE side after a CHILD SA is established. */
typedef struct esp_tunnel_net {
    esp_prefix vip;            /* virtual IP with prefix length (32/128 typical) */
    bool has_vip;
    esp_prefix vip2;           /* a second virtual IP, of the other family (a
                                * dual-stack tunnel: INTERNAL_IP4_ADDRESS and
                                * INTERNAL_IP6_ADDRESS) */
    bool has_vip2;
    esp_prefix remote_ts[ESP_MAX_TS];
    size_t n_remote_ts;
    esp_prefix dns[ESP_MAX_DNS]; /* prefix_len unused */
    size_t n_dns;
    uint16_t encr_id, integ_id;  /* for the default MTU */
    /* Inbound filter (RFC 4301 §5.2): a decrypted packet goes up the TUN only
     * if its source lies in `in_src` (the remote selectors as negotiated: TSr
     * as the gateway narrowed it) and its destination in `in_dst` (ours: the
     * virtual IP, or TSi without one). Others are dropped and counted
     * (ESP_DROP_SELECTOR). Outbound, in_src is also what the SA carries: a
     * packet routed into the TUN for a destination it does not cover is
     * dropped (ESP_DROP_NO_SA). n_in_src = 0: the source is checked against
     * remote_ts; n_in_dst = 0: the destination must be a virtual IP (vip,
     * vip2) when there is one, else it is not checked. */
    esp_prefix in_src[ESP_MAX_TS];
    size_t n_in_src;
    esp_prefix in_dst[ESP_MAX_TS];
    size_t n_in_dst;
    /* The gateways' IKE ports besides 500 and 4500 (0 = none): the kill
     * switch's nftables table lets our marked UDP out to these only. */
    uint16_t ike_ports[ESP_MAX_IKE_PORTS];
    size_t n_ike_ports;
    /* The IPv6 prefixes are implied (the ::/0 of a full IPv4 tunnel): where
     * the kernel refuses IPv6 routes (IPv6 off on the TUN, or no IPv6 in the
     * kernel), their routes and rule are skipped, not an error. They stay in
     * the nftables set all the same: an interface that gets IPv6 later
     * (conf/default, SLAAC) cannot leak it. */
    bool ipv6_route_optional;
} esp_tunnel_net;

typedef struct esp_datapath esp_datapath;

/* Our routing table for the TUN `tun_name` ("" -> "m2m0"), which is also the
 * fwmark (SO_MARK) that our IKE and ESP sockets, and any socket that probes
 * the way to the gateway, must carry to reach it outside the tunnel. */
uint32_t esp_tunnel_table(const char *tun_name);

/* Callbacks on the engine thread (after esp_datapath_attach). */
typedef struct esp_datapath_callbacks {
    /* A non-ESP (IKE) packet arrived on the shared socket; `data` is the IKE
     * message without the 4-byte non-ESP marker. Valid during the call. */
    void (*on_ike_packet)(void *arg, const uint8_t *data, size_t len,
                          const struct sockaddr *from, socklen_t from_len);
    /* An SA asks to be rekeyed (or stopped sending: hard reasons). */
    void (*on_rekey)(void *arg, uint32_t spi_in, esp_rekey_reason reason);
    /* Optional: with esp_datapath_hold on, a packet for a protected network
     * was held for want of an SA (once until the SA is up or hold is set
     * again). */
    void (*on_traffic)(void *arg);
    /* Optional: apply DNS servers (default none: only recorded for status). */
    int (*apply_dns)(void *arg, const esp_prefix *dns, size_t n_dns);
} esp_datapath_callbacks;

/* Open the UDP socket (bound to cfg->local, port 4500 by default; exclusive)
 * and the TUN device (persistent with the kill switch). Routes are only added
 * by esp_datapath_set_network. Bound to the IPv6 any-address, the socket is
 * dual-stack (IPV6_V6ONLY off): it reaches IPv4 and IPv6 gateways alike, and
 * peers given as AF_INET are mapped (::ffff:a.b.c.d) wherever the datapath
 * sends. Where the kernel has no IPv6, the IPv6 any-address falls back to
 * the IPv4 one. Errors: INVAL, NETWORK (bind), TUN, NOMEM. */
int esp_datapath_new(const esp_datapath_config *cfg, esp_datapath **ret,
                     char *err, size_t err_len);

/* Watch the handoff eventfd on the engine loop (and, without threads, the TUN
 * and UDP fds); callbacks get `arg`. Also arms a 1-second timer for time
 * lifetimes and keepalives. cbs is copied. Errors: INVAL (already attached),
 * SYSTEM. */
int esp_datapath_attach(esp_datapath *dp, core_loop *loop,
                        const esp_datapath_callbacks *cbs, void *arg);

/* Configure the TUN: MTU, virtual IP, routes for the remote traffic selectors
 * in our table with its rule (+ blackholes and the nftables table with the
 * kill switch), DNS recorded (and applied via the hook).
 * Outbound packets are only sent if in_src (the remote selectors as
 * negotiated; default remote_ts) covers their destination; inbound ones only
 * go up if in_src/in_dst cover them. Calling it again replaces what the previous call added (new
 * routes are added before old ones go, so the kill switch has no gap).
 * Errors: TUN (netlink, reason in err), INVAL (MTU above ESP_MAX_TUN_MTU). */
int esp_datapath_set_network(esp_datapath *dp, const esp_tunnel_net *net,
                             char *err, size_t err_len);

/* Install a CHILD SA (created from cfg; keys copied). It becomes the outbound
 * SA (unless cfg->inbound_only and another SA sends: then it sends once it
 * is the only SA left); earlier SAs stay inbound-capable until
 * removed (rekey overlap). Up to 4 SAs at once. Errors as esp_sa_new, plus
 * STATE (table full). */
int esp_datapath_install_sa(esp_datapath *dp, const esp_sa_config *cfg,
                            char *err, size_t err_len);
/* A CHILD SA with inbound SPI spi_in is being negotiated (the IKE_AUTH of a
 * reauthentication). The gateway may send ESP with it as soon as its
 * response leaves, while the engine is still reading that response: up to
 * ESP_PARK_MAX such packets wait (the receiving thread copies them; nothing
 * is decrypted yet) until esp_datapath_release_parked(). Another SPI, or 0,
 * ends the wait: what waited is dropped (ESP_DROP_NO_SA). Packets with any
 * other unknown SPI are dropped as ever. Engine thread. */
void esp_datapath_expect_spi(esp_datapath *dp, uint32_t spi_in);
/* The SA spi_in is installed and the network it carries is set (its
 * selectors): the packets that waited for it are authenticated and delivered
 * now, in the order they came; the wait ends. Nothing if spi_in is not the
 * one expected. Engine thread. */
void esp_datapath_release_parked(esp_datapath *dp, uint32_t spi_in);
#define ESP_PARK_MAX 16

/* Remove the SA with this inbound SPI (waits until no worker uses it).
 * Errors: INVAL (unknown SPI). */
int esp_datapath_remove_sa(esp_datapath *dp, uint32_t spi_in);
/* Remove every SA (the IKE SA is gone): nothing sends until the next install
 * (the kill switch drops), no slot stays taken. */
void esp_datapath_remove_all_sas(esp_datapath *dp);

/* On-demand: while no outbound SA is installed, keep up to 4 packets that a
 * remote selector covers (the rest is dropped as ever) and call on_traffic;
 * the next esp_datapath_set_network with an SA installed sends them, IPv4
 * sources rewritten to the virtual IP (they left before it existed). This
 * call drops what is held. Engine thread. */
void esp_datapath_hold(esp_datapath *dp, bool on);

/* Send an IKE message (marker prepended) to `to` from the shared socket. */
int esp_datapath_send_ike(esp_datapath *dp, const uint8_t *msg, size_t len,
                          const struct sockaddr *to, socklen_t to_len);

/* NAT keepalives (one 0xFF byte, RFC 3948 §2.3) to the outbound SA's peer
 * every `interval_s` seconds while an SA is installed; 0 = off. */
void esp_datapath_set_keepalive(esp_datapath *dp, uint32_t interval_s);

/* Start/stop the worker threads (no-op if cfg->threads is false). */
int esp_datapath_start(esp_datapath *dp);
void esp_datapath_stop(esp_datapath *dp);

/* Without threads (tests, single-threaded use): move up to one batch from the
 * TUN to UDP / from UDP to the TUN. Non-blocking. Returns 0 when there was
 * nothing to do, ESP_BATCH-sized counts mean "more may be waiting". */
int esp_datapath_poll_tun(esp_datapath *dp);
int esp_datapath_poll_udp(esp_datapath *dp);

/* Sum over current SAs plus drops that matched no SA. Any thread. */
typedef struct esp_datapath_counters {
    esp_sa_counters total;
    uint64_t ike_packets_in, keepalives_out;
} esp_datapath_counters;
void esp_datapath_get_counters(esp_datapath *dp, esp_datapath_counters *out);

/* Counters of one installed SA (by inbound SPI). Any thread. Errors: INVAL. */
int esp_datapath_get_sa_counters(esp_datapath *dp, uint32_t spi_in, esp_sa_counters *out);

/* New peer address for an SA (NAT mapping changed, MOBIKE/roaming), and for
 * every other SA that had the same peer (a rekey overlap's old SA, which may
 * still be the one sending); SAs with another peer keep theirs. A peer of
 * another address family changes the outer header: the TUN MTU follows
 * (unless set by esp_datapath_config.mtu). The UDP
 * socket itself needs no change when bound to the any-address (recommended:
 * the kernel then picks the source of whatever interface is up).
 * Errors: INVAL (unknown SPI, bad address), TUN (the MTU not set). */
int esp_datapath_set_peer(esp_datapath *dp, uint32_t spi_in, const struct sockaddr *peer,
                          socklen_t peer_len);

/* What holds the protected traffic in the TUN, for the log and status. */
typedef struct esp_kill_switch_info {
    uint32_t table;            /* our routing table (= fwmark) */
    uint32_t rule_priority;    /* ESP_RULE_PRIORITY */
    bool routing;              /* our table's routes and the rules are in place */
    bool nftables;             /* the nftables table is in place */
    char nft_table[40];        /* "inet m2mvpn_<tun>" */
    char nft_why[128];         /* why not, when !nftables */
} esp_kill_switch_info;
void esp_datapath_kill_switch_info(const esp_datapath *dp, esp_kill_switch_info *out);

/* Current DNS servers (as set by set_network); returns how many. */
size_t esp_datapath_dns(const esp_datapath *dp, esp_prefix *out, size_t max);
/* ifindex of the TUN; the shared UDP socket (for status/diagnostics only:
 * do not read from it). */
int esp_datapath_tun_ifindex(const esp_datapath *dp);
int esp_datapath_udp_fd(const esp_datapath *dp);

/* Remove the profile's network on purpose: routes, blackholes, rules, the
 * nftables table, addresses, and the persistent TUN. `remove_all` false only drops the SAs (kill switch stays).
 * Stops threads. */
void esp_datapath_teardown(esp_datapath *dp, bool remove_all);

/* Remove what a datapath with the kill switch left for the TUN `tun_name`
 * after esp_datapath_free: the routes and blackholes of its table, its
 * rules, its nftables table, the persistent device. For a change of TUN
 * name, once the new name's kill switch is in place. Errors: TUN. */
int esp_network_remove(const char *tun_name, char *err, size_t err_len);

/* Stop threads, detach, free. With the kill switch on (and no teardown), the
 * persistent TUN, routes and blackholes remain; otherwise all is removed. */
void esp_datapath_free(esp_datapath *dp);

#endif
