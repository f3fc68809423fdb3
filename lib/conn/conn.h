/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The connection supervisor: turns "connect this profile" into a running
 * tunnel and keeps it so. It is a state machine (conn_phase below): one
 * setter moves between phases, logs "A -> B (reason)", refuses moves that
 * are not in its table and derives the public m2mvpn_state.
 *
 * What it drives sits behind conn_ops (conn_sys.c is the real one): the
 * profile's network (ESP datapath: UDP/4500 socket, TUN, routes, kill
 * switch), the way to a gateway (name, underlay interface, port-500 socket),
 * the credentials and the IKE SA. Tests (tests/unit/test_conn.c) put a fake
 * there and a mocked clock into the core_loop.
 *
 * Modes (profile "mode"):
 *  - always-on: connects as soon as the profile is in use and after every
 *    failure a retry can fix: back-off with jitter (conn_backoff_ms), a longer
 *    schedule after authentication failures, and the next gateway of the list
 *    after a timeout or an unreachable gateway. Never retried: local causes a
 *    retry cannot fix (PIN, CERT, PROFILE, NOTSUPP, INVAL, CREDENTIALS: a wrong
 *    PIN above all). Whatever the gateway did (ike_fault PEER) is retried.
 *    An EAP password the gateway refused (AUTH_LOCAL, fault LOCAL) is never
 *    sent again: always-on waits for new credentials (wait-credentials,
 *    CREDENTIALS_REQUIRED); on-demand and manual stay down and ask on the
 *    next connect.
 *  - on-demand: the TUN and its routes (and the kill switch) are in place
 *    from the start ("armed"); the first packet for a protected network, or
 *    conn_connect(), starts the connection; the packets held meanwhile by the
 *    datapath leave once the SA is up; after tunnel.on_demand_idle_s without
 *    traffic the tunnel closes and is armed again. A failure arms it again
 *    after the back-off (no retry of its own: the next packet then starts
 *    one), except for the local causes above.
 *  - manual: connects on conn_connect(), stays down after a failure.
 *
 * Reauthentication (ike.reauth_s, RFC 7296 §2.8.3) is make-before-break:
 * UP -> REAUTHENTICATING (public state still CONNECTED) while a second IKE
 * SA and CHILD SA come up next to the current ones (conn_ops.reauth_*), ->
 * UP once the new CHILD SA carries the traffic and the old IKE SA is being
 * deleted, or with the old one if the new one failed. A profile switch
 * while up uses the same path when the new profile keeps the gateway, TUN,
 * kill switch and mode ("make-before-break"); else it is break-before-make
 * and the move says why.
 *
 * IKE and datapath callbacks do not re-enter the state machine: on_down,
 * rekey requests and "traffic wanted" are posted to the loop (conn_post_*)
 * and handled from a timer. Only what carries keys comes during the SA's
 * callback (conn_ike_established, conn_child_rekeyed, after the ops
 * installed the SA); a rekey is no move of the machine (the tunnel stays
 * up, counted in conn_status.rekeys). Roaming (MOBIKE, RFC 4555): a new
 * path while up moves UP -> ROAMING; the gateway's confirmation moves back
 * to UP (ROAMED, counted in conn_status.roams); no MOBIKE, a refusal or
 * no answer within CONN_ROAM_TIMEOUT_MS: the fastest reconnect (RESTARTING
 * at once, no back-off). A new path during REAUTHENTICATING drops the new
 * IKE SA (conn_ops.reauth_abort: it was made on the old path) and roams the
 * one that carries the tunnel; the reauthentication is tried again once UP
 * (a reauthentication due while ROAMING waits likewise). During a
 * make-before-break profile switch it restarts with the new profile on the
 * new path instead (break-before-make, the move says why). It reports through hooks (public state and
 * events) and conn_get_status() (its own conn_status, which lib/api turns
 * into m2mvpn_status). Everything runs on the engine thread.
 */
#ifndef M2MVPN_CONN_H
#define M2MVPN_CONN_H

#include <m2mvpn/m2mvpn.h>

#include "core/log.h"
#include "core/loop.h"
#include "esp/esp.h"
#include "ike/ike.h"
#include "profile/profile.h"

/* ------------------------------------------------------------ phases */

#define CONN_PHASE_MAP(XX)                                                     \
    XX(IDLE,        "idle")        /* nothing wanted (network maybe kept) */  \
    XX(ARMED,       "armed")       /* on-demand: waiting for traffic */       \
    XX(WAIT_PIN,    "wait-pin")    /* a credential waits for its PIN */       \
    XX(WAIT_CREDENTIALS, "wait-credentials") /* EAP user + password wanted */ \
    XX(NEGOTIATING, "negotiating") /* IKE SA on its way */                    \
    XX(UP,          "up")          /* CHILD SA installed */                   \
    XX(ROAMING,     "roaming")     /* our path moved: MOBIKE update under way */ \
    XX(REAUTHENTICATING, "reauthenticating") /* up; a new IKE SA on its way */ \
    XX(RESTARTING,  "restarting")  /* closing to start over at once */        \
    XX(CLOSING,     "closing")     /* closing to stay down */                 \
    XX(BACKOFF,     "backoff")     /* waiting before the next attempt */

typedef enum conn_phase {
#define CONN_XX_ENUM(name, text) CONN_##name,
    CONN_PHASE_MAP(CONN_XX_ENUM)
#undef CONN_XX_ENUM
    CONN_PHASE__COUNT
} conn_phase;

const char *conn_phase_name(conn_phase p);

/* Longest wait for the gateway's answer to an address update. */
#define CONN_ROAM_TIMEOUT_MS 8000

/* ------------------------------------------------------------ back-off */

/* Attempt n (0 = first retry) waits base * 2^n, capped, then jittered by
 * +-CONN_JITTER_PCT percent (rnd: any 32-bit random value). Authentication
 * failures use their own, longer schedule: a wrong key or an untrusted
 * gateway does not heal in a second, and hammering the gateway would look
 * like an attack. */
#define CONN_BACKOFF_FIRST_MS      1000
#define CONN_BACKOFF_MAX_MS        60000
#define CONN_BACKOFF_AUTH_FIRST_MS 10000
#define CONN_BACKOFF_AUTH_MAX_MS   900000
#define CONN_JITTER_PCT            20
uint64_t conn_backoff_ms(unsigned n, bool auth_failure, uint32_t rnd);

/* -------------------------------------------------------------- hooks */

typedef struct conn_hooks {
    void *arg;
    /* Tunnel state changed (the API's STATE_CHANGED); detail may be NULL:
     * the error's detail, or else the reason of the move. */
    void (*on_state)(void *arg, m2mvpn_state st, int err, const char *detail);
    /* Other events: PIN_REQUIRED, CREDENTIALS_REQUIRED, AUTH_FAILED. */
    void (*on_event)(void *arg, m2mvpn_event_type type, int err, const char *detail);
} conn_hooks;

typedef struct conn conn;

/* What conn reports about the tunnel (lib/api turns it into the public
 * m2mvpn_status): the connection, its counters, the credential, and the
 * state machine's own record. Strings are NUL-terminated, "" when unknown. */
typedef struct conn_status {
    char gateway[64];             /* "host:port" while an IKE SA or CHILD SA exists */
    char virtual_ip[48];
    int64_t connected_since;      /* Unix time, 0 = not connected */
    char ike_algorithms[96], esp_algorithms[96];
    char dns[4][48];
    uint32_t spi_in, spi_out;     /* the CHILD SA, 0 = none */
    bool counters;                /* false: no datapath now, the counters below unknown */
    uint64_t bytes_in, bytes_out, packets_in, packets_out, packets_dropped;
    uint64_t dropped_replay, dropped_integrity, dropped_no_sa;
    char credential_source[16];   /* "file", "pkcs11", "tpm" */
    char credential[160];         /* what holds our key; never a PIN */
    char cert_subject[256];
    int64_t cert_not_after;
    conn_phase phase;
    uint64_t reconnects, rekeys, roams; /* rekeys: CHILD and IKE SA rekeys, reauthentications */
    int64_t last_change;          /* Unix time of the last move, 0 = none */
    char last_reason[128];
} conn_status;

/* EAP credentials for one attempt (see conn_ops.sa_start). */
typedef struct conn_eap {
    const char *user;
    const char *pass;
    size_t pass_len;
} conn_eap;

/*
 * What the state machine drives. Every call runs on the engine thread;
 * results of the IKE SA come back through conn_ike_established() (during the
 * SA's callback: the keys are valid only then) and conn_post_ike_down();
 * datapath requests through conn_post_rekey() and conn_post_traffic().
 * (err, err_len): a human reason on failure.
 */
typedef struct conn_ops {
    void *arg;
    /* The profile's network: TUN and routes of its remote selectors, the
     * kill switch when the profile has it; hold = keep the first packets
     * without SA and report them (on-demand). Idempotent. */
    int (*net_arm)(void *arg, const profile *p, bool hold, char *err, size_t err_len);
    /* Give the network up; remove: routes, kill switch and TUN too. */
    void (*net_release)(void *arg, bool remove);
    /* Remove what a profile with TUN tun_name left (routes, kill switch),
     * without a datapath: after a switch that armed the new one first. */
    int (*net_remove)(void *arg, const char *tun_name, char *err, size_t err_len);
    /* The kill switch's layers in place now; false without a datapath. */
    bool (*kill_switch_info)(void *arg, esp_kill_switch_info *ks);
    /* The way to gateway gw_index of p: name, underlay, port-500 socket.
     * gw_text: "host:port". */
    int (*path_open)(void *arg, const profile *p, size_t gw_index, char *gw_text, size_t gw_text_len,
                     char *err, size_t err_len);
    /* Credentials and trust anchors of p; *pin_needed: a PIN must come
     * first, and `what` names what needs it (token and key, or file). */
    int (*cred_load)(void *arg, const profile *p, bool *pin_needed, char *what, size_t what_len,
                     char *err, size_t err_len);
    int (*cred_pin)(void *arg, const char *pin, size_t len, char *err, size_t err_len);
    void (*cred_release)(void *arg);
    /* Create and start the IKE SA over the open path; eap: the EAP user and
     * password for it (NULL unless auth.method is eap), valid during the
     * call only (the SA copies what it keeps). */
    int (*sa_start)(void *arg, const profile *p, const conn_eap *eap, char *err, size_t err_len);
    /* Rekey this CHILD SA (CREATE_CHILD_SA); the result comes back through
     * conn_child_rekeyed(). < 0: no rekey could start. */
    int (*child_rekey)(void *arg, uint32_t spi_in);
    /* Reauthentication (RFC 7296 §2.8.3), make-before-break: a new IKE SA
     * and CHILD SA next to the current ones (credentials read anew, eap as
     * for sa_start); the current SA keeps the traffic. The outcome comes
     * through conn_reauth_established() or conn_post_reauth_failed(). NULL
     * or < 0: no reauthentication (the tunnel stays as it is). */
    int (*reauth_start)(void *arg, const profile *p, const conn_eap *eap, char *err, size_t err_len);
    /* During conn_reauth_established(): install the new CHILD SA (sending
     * moves to it), make the new IKE SA the tunnel's and delete the old one.
     * < 0: the new SA is dropped, the old one carries on. */
    int (*reauth_install)(void *arg, const profile *p, const ike_child_result *r, char *err, size_t err_len);
    /* Optional: drop the reauthentication under way (our path moved: the
     * new IKE SA was made on the old one); nothing more comes for it. */
    void (*reauth_abort)(void *arg);
    /* Delete it; conn_post_ike_down() follows (maybe during this call). */
    void (*sa_close)(void *arg);
    /* Free the SA and close the path's socket. Never called from inside the
     * SA's callbacks. */
    void (*sa_release)(void *arg);
    /* Install the CHILD SA and its network; *spi_in, algorithms for status. */
    int (*child_install)(void *arg, const profile *p, const ike_child_result *r, char *err, size_t err_len);
    void (*child_remove)(void *arg, uint32_t spi_in);
    /* Counters, DNS, algorithms and the credential into the status (child:
     * a CHILD SA is up). */
    void (*fill_status)(void *arg, bool child, conn_status *st);
    /* Inner packets in + out so far (idle detection). */
    uint64_t (*traffic)(void *arg);
    /* Our path to the gateway moved (conn_post_path_changed): follow it
     * (sockets to the new interface) and ask the gateway to move the SAs
     * (MOBIKE UPDATE_SA_ADDRESSES); the outcome comes back through
     * conn_post_addresses_updated(). M2MVPN_E_NOTSUPP: the gateway has no
     * MOBIKE; < 0 otherwise: no update could start. Optional (NULL: a
     * move is a reconnect). */
    int (*roam)(void *arg, const char *reason);
    /* Wall-clock seconds (status) and a random value (jitter). */
    int64_t (*wall_time)(void *arg);
    uint32_t (*random)(void *arg);
} conn_ops;

int conn_new(core_loop *loop, core_log *log, const conn_hooks *hooks, conn **ret);
/* The same with other ops (tests); *ops is copied. */
int conn_new_with_ops(core_loop *loop, core_log *log, const conn_hooks *hooks, const conn_ops *ops,
                      conn **ret);
/* Tear down without waiting for the gateway (the IKE SA is deleted best
 * effort); the kill switch stays unless conn_remove_profile() ran. NULL is fine. */
void conn_free(conn *c);

/* Use this profile from now on (a reference on its set is taken). A running
 * tunnel of another profile is replaced make-before-break where possible
 * (see above), else closed first. */
void conn_set_profile(conn *c, profile_set *set, const profile *p);
/* Connect (again). Errors come back through on_state. */
void conn_connect(conn *c);
/* Close the tunnel and stay down (on-demand: armed again). */
void conn_disconnect(conn *c);
/* A PIN for a locked credential; copied and wiped. Tried once. */
void conn_enter_pin(conn *c, const char *pin, size_t len);
/* EAP user (NULL: the profile's auth.eap.identity) and password, copied;
 * the password is wiped when replaced, refused or freed. Answers a
 * CREDENTIALS_REQUIRED wait (a new attempt starts when the tunnel is
 * wanted) or is kept for the next attempt. */
void conn_set_credentials(conn *c, const char *user, const char *pass, size_t len);
/* Name of the profile in use, or NULL. */
const char *conn_profile_name(const conn *c);
/* Up (CHILD SA installed, no switch or reauthentication under way) with
 * exactly this profile set (compared, not used): management's commit rule. */
bool conn_up_with_set(const conn *c, const profile_set *set);
/* Reauthenticate now, make-before-break (a renewed certificate: the new IKE
 * SA reads the credential anew): UP -> REAUTHENTICATING at once; during a
 * reauthentication or roaming, once UP again. M2MVPN_E_STATE: no tunnel up
 * (the next IKE SA reads it anyway); M2MVPN_E_NOTSUPP: the ops cannot. */
int conn_reauth_now(conn *c);
/* Remove the profile's network on purpose (kill switch included). */
void conn_remove_profile(conn *c);

/* The tunnel's status now (zeroed first). */
void conn_get_status(conn *c, conn_status *st);

/* Current phase (tests, diagnostics). */
conn_phase conn_get_phase(const conn *c);
/* Try a move as the state machine would (tests: a move outside the table is
 * refused, logged, and changes nothing). Returns 0 or M2MVPN_E_STATE. */
int conn_try_phase(conn *c, conn_phase to, const char *reason);

/* --------------------------------------- from the ops' side (engine thread) */

/* The IKE SA and its CHILD SA are up (during the SA's own callback). */
void conn_ike_established(conn *c, const ike_child_result *r);
/* A rekey replaced CHILD SA old_spi_in (during the SA's callback, after the
 * ops installed the new one: err 0) or installing it failed (err < 0,
 * detail why): the tunnel then starts over. */
void conn_child_rekeyed(conn *c, uint32_t old_spi_in, uint32_t spi_in, uint32_t spi_out, int err,
                        const char *detail);
/* The reauthentication's new IKE SA and CHILD SA are up (during its
 * callback: the keys are valid only then). */
void conn_reauth_established(conn *c, const ike_child_result *r);
/* The reauthentication's new IKE SA failed; the current one carries on.
 * Handled from the loop. */
void conn_post_reauth_failed(conn *c, int err, ike_fault fault, const char *detail);
/* The IKE SA was rekeyed (during the SA's callback). */
void conn_ike_rekeyed(conn *c);
/* The IKE SA is down (as ike_hooks.on_down); handled from the loop. */
void conn_post_ike_down(conn *c, int err, ike_fault fault, const char *detail);
/* The datapath asks for a rekey of this CHILD SA; handled from the loop. */
void conn_post_rekey(conn *c, uint32_t spi_in, esp_rekey_reason reason);
/* The datapath holds a packet for a protected network without SA. */
void conn_post_traffic(conn *c);
/* Our way to the gateway changed (another source address or interface;
 * reason says from what to what); handled from the loop: roaming while
 * up, an attempt at once while waiting to retry. */
void conn_post_path_changed(conn *c, const char *reason);
/* An UPDATE_SA_ADDRESSES exchange ended (ike_hooks.on_addresses_updated);
 * handled from the loop. */
void conn_post_addresses_updated(conn *c, int err, bool ours, const char *detail);

/* The kill switch's layers now in place, for the status. */
typedef struct conn_kill_switch {
    bool on;                   /* the profile has tunnel.kill_switch */
    bool routing;              /* our routing table, blackholes and rules */
    bool nftables;             /* the nftables table */
    bool routing_only_allowed; /* tunnel.kill_switch_routing_only */
    char nft_why[128];         /* why no nftables table */
} conn_kill_switch;
void conn_kill_switch_status(conn *c, conn_kill_switch *out);

#endif
