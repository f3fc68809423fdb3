/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Profiles: the JSON format of docs/profile.md (version 1), parsed and fully
 * validated into plain structs. Parsing touches no global state and no file
 * other than the one given, so it runs in the caller's thread; the engine
 * receives a finished, immutable profile_set.
 *
 * Errors name the key path and the fault, e.g.
 *   "gateways[0].port: must be 1..65535"
 *   "ike.proposals[1]: unknown algorithm 'aes512'"
 *   "tunnel.kill_swich: unknown key"
 *   "profiles[2].remote_id: required"           (inside {"profiles": [...]})
 *   "line 3, column 7: unexpected character"    (malformed JSON)
 * docs/profile.md lists every key with its type, default and range.
 *
 * Strictness: unknown keys, wrong JSON types (null included), out-of-range
 * numbers, keys repeated in one object, and sections or keys that do not
 * belong to the chosen auth.method / auth.cert.source are all refused.
 * Comments are accepted. Files named in a profile (certificates, keys, CAs)
 * are not opened here and need not exist yet: they may be provisioned later;
 * the credential module reports them missing when it needs them.
 *
 * Secrets (psk, eap.password, cert.pin) are held in memory that is wiped when
 * the set is freed; the JSON text copies and the json-c tree are wiped too.
 * No error text ever contains a value from the profile except names,
 * algorithm keywords and prefixes.
 */
#ifndef M2MVPN_PROFILE_H
#define M2MVPN_PROFILE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proposal.h"

#define PROFILE_MAX_GATEWAYS 8
#define PROFILE_MAX_PROPOSALS 8
#define PROFILE_MAX_CA 8
#define PROFILE_MAX_TS 16

typedef enum profile_mode { PROFILE_MODE_ALWAYS_ON, PROFILE_MODE_ON_DEMAND, PROFILE_MODE_MANUAL } profile_mode;
typedef enum profile_auth { PROFILE_AUTH_PSK, PROFILE_AUTH_EAP, PROFILE_AUTH_CERT } profile_auth;
typedef enum profile_cert_source {
    PROFILE_CERT_FILE, PROFILE_CERT_MACHINE, PROFILE_CERT_PKCS11, PROFILE_CERT_TPM
} profile_cert_source;

typedef struct profile_gateway {
    char *host;               /* name or literal address */
    uint16_t port;            /* default 500 */
} profile_gateway;

typedef struct profile_ts {   /* an IPv4 or IPv6 prefix */
    int family;               /* AF_INET or AF_INET6 */
    uint8_t addr[16];
    uint8_t prefix_len;
} profile_ts;

typedef struct profile {
    char *name;               /* 1..63 of A-Z a-z 0-9 . _ - ; unique in a set */
    profile_mode mode;        /* default PROFILE_MODE_ALWAYS_ON */
    profile_gateway gateways[PROFILE_MAX_GATEWAYS];
    size_t n_gateways;        /* 1..PROFILE_MAX_GATEWAYS, in failover order */
    char *local_id;           /* psk: required; eap: default eap.identity;
                               * cert: NULL = the certificate's subject */
    char *remote_id;          /* required */

    profile_auth auth;
    char *psk;                /* secret: wiped by profile_free */
    struct {
        char *type;           /* "mschapv2" or "md5" (others refused) */
        char *identity;
        char *password;       /* secret; NULL: ask with CREDENTIALS_REQUIRED */
    } eap;
    struct {
        profile_cert_source source;
        char *file;           /* absolute path after resolution */
        char *key;            /* absolute path, or NULL (key in .p12) */
        char *pin;            /* secret; NULL: ask with PIN_REQUIRED */
        char *pkcs11_module;  /* kept as given (the loader may search for it) */
        char *pkcs11_uri;     /* starts with "pkcs11:" (RFC 7512) */
        char *tpm_key;        /* absolute path, or a handle "0x81..." kept as is */
        char *tpm_tcti;       /* NULL: the system's TPM */
        char *bind_sources;   /* machine: "machine-id,mac:eth0" (the bound file
                               * must use exactly these), or NULL: any */
    } cert;                   /* fields a source does not use are NULL */

    char *ca[PROFILE_MAX_CA]; /* absolute paths */
    size_t n_ca;

    struct {
        proposal proposals[PROFILE_MAX_PROPOSALS];
        size_t n_proposals;   /* >= 1 after parsing; default: one proposal
                               * aes256gcm16-aes128gcm16-prfsha384-prfsha256-x25519-ecp256-modp3072 */
        uint32_t lifetime_s;  /* default 14400 */
        uint32_t reauth_s;    /* "reauth_s": reauthenticate (a new IKE SA, RFC 7296
                               * §2.8.3) after this long; default 0 = never */
        uint32_t dpd_s;       /* default 30; 0 = off */
        bool fragmentation;   /* default true */
        bool mobike;          /* default true */
        uint32_t nat_keepalive_s; /* default 20 */
        double retransmit_timeout_s; /* default 4.0 */
        double retransmit_base;      /* default 1.8 */
        uint32_t retransmit_tries;   /* default 5 */
        bool force_encap;     /* "force_encap": UDP/4500 even without NAT; default false */
        bool allow_sha1_signatures; /* RSA AUTH with SHA-1 (method 1) both ways; default false */
    } ike;

    struct {
        proposal proposals[PROFILE_MAX_PROPOSALS];
        size_t n_proposals;   /* >= 1; default: one proposal aes256gcm16-aes128gcm16 */
        uint32_t lifetime_s;  /* default 3600 */
        uint64_t lifetime_bytes;   /* "lifetime_bytes": inner bytes per direction; 0 = none (default) */
        uint64_t lifetime_packets; /* "lifetime_packets": inner packets per direction; 0 = none (default) */
        uint32_t replay_window; /* default 1024; 0 = off; max 65536 */
        uint32_t batch;       /* packets per TUN -> ESP batch; default 32; 1..128 */
    } esp;

    struct {
        bool request_vip;     /* default true */
        profile_ts remote_ts[PROFILE_MAX_TS];
        size_t n_remote_ts;   /* default 0.0.0.0/0 (and ::/0, below) */
        /* "full_tunnel_families": "both" (default, false here) or "listed"
         * (true). With "both", a full tunnel in one family (0.0.0.0/0 or
         * ::/0) and no prefix of the other family protects the other family
         * too: its /0 is appended to remote_ts when the profile is read. It
         * then goes into the tunnel if the gateway grants it and is blocked
         * otherwise, never sent outside (an IPv4 full tunnel on a dual-stack
         * network must not leak IPv6). "listed": only the listed families. */
        bool full_tunnel_listed_only;
        int implied_family;   /* AF_INET6/AF_INET: the /0 so appended (the last
                               * remote_ts entry), 0: none */
        bool dns;             /* default true */
        bool kill_switch;     /* default true */
        bool kill_switch_routing_only; /* default false: no nftables layer is an error */
        char *tun_name;       /* default "m2m0" */
        char *dns_hook;       /* absolute path of an executable run as
                               * "HOOK up TUN DNS..." / "HOOK down TUN", or NULL */
        uint32_t mtu;         /* 0 = derive from underlay; else 576..9000 */
        uint32_t on_demand_idle_s; /* default 300 */
    } tunnel;

    /* "management": this profile is a bootstrap (DESIGN §9). gateways,
     * remote_id and auth may then be absent (n_gateways 0): lib/mgmt enrols
     * and installs the individual profile that has them. */
    struct {
        bool on;
        char *url;            /* "https://..." without a trailing '/' */
        char *server_ca;      /* absolute path: the one anchor of the server's TLS */
        char *bundle_signer;  /* absolute path: the one allowed bundle signer */
        char *token;          /* secret "ID.SECRET" (16 hex, '.', 43 base64url) */
        profile_cert_source provider; /* FILE, PKCS11 or TPM */
        char *key;            /* file: absolute path, NULL = device.key.pem in the state dir */
        char *pkcs11_module, *pkcs11_uri;
        char *tpm_key;        /* absolute path or handle "0x81...", NULL = device.tss2.pem in the state dir */
        char *tpm_tcti;
        char *pin;            /* secret; pkcs11: required */
        uint32_t poll_s;      /* default 300, 10..86400 */
        char *installer;      /* absolute path of an executable, or NULL: UPDATE_AVAILABLE */
        uint32_t installer_timeout_s; /* default 900, 10..86400 */
    } mgmt;
} profile;

typedef struct profile_set {
    profile *items;
    size_t n;
    atomic_size_t extra_refs;  /* references beyond the first (profile_set_ref) */
} profile_set;

/*
 * Parse `len` bytes of JSON (no NUL needed; at most 1 MiB). `base_dir`
 * resolves relative paths (NULL: the current directory; a relative base_dir
 * is taken from the current directory). On success *ret is a new set (1..32
 * profiles, in the order given) and 0 is returned; on failure a negative
 * M2MVPN_E_JSON / M2MVPN_E_PROFILE / M2MVPN_E_NOMEM (M2MVPN_E_INVAL for NULL
 * json or ret, M2MVPN_E_IO if the current directory is needed but gone),
 * *ret untouched and `err` (may be NULL) holds "path: what is wrong".
 * Reentrant: no global state.
 */
int profile_set_parse(const char *json, size_t len, const char *base_dir,
                      profile_set **ret, char *err, size_t err_len);
/* Read and parse a file (at most 1 MiB); relative paths resolve against its
 * folder. Adds M2MVPN_E_IO "cannot read <path>: <strerror>" (or ": larger
 * than 1 MiB") to the errors above. The bytes read are wiped after parsing. */
int profile_set_load_file(const char *path, profile_set **ret, char *err, size_t err_len);
/* Drops one reference; the last one wipes every secret and frees everything.
 * NULL is fine. Thread-safe against other references (API registry and
 * engine share sets). */
void profile_set_free(profile_set *set);
/* Takes another reference (for whoever must keep the set alive). Returns set. */
profile_set *profile_set_ref(profile_set *set);

/* The profile named `name`, or NULL (also for NULL set or name). The pointer
 * lives as long as the set. */
const profile *profile_set_find(const profile_set *set, const char *name);

/* A PSK shorter than this is accepted (gateways' keys must keep working) but
 * warned about: the initiator's PSK AUTH goes out before the responder is
 * authenticated, so a man in the middle gets material to guess it offline. */
#define PROFILE_PSK_MIN_CHARS 20

/* Warnings about a valid profile (settings that work but weaken it): up to
 * `max` constant strings into out (never a value from the profile; a secret
 * is described by its length class only). Returns how many apply (may be
 * more than max). NULL p: 0. */
size_t profile_warnings(const profile *p, const char **out, size_t max);

/* Names as written in profiles ("always-on", "psk", "pkcs11"); "unknown" for
 * a value outside the enum. Static strings. */
const char *profile_mode_name(profile_mode m);
const char *profile_auth_name(profile_auth a);
const char *profile_cert_source_name(profile_cert_source s);

#endif
