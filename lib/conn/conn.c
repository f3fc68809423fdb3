/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The connection state machine. Read it as its table: conn_phase (conn.h),
 * the moves allowed below (allowed[]), and set_phase(), the one function
 * that changes the phase. Everything else decides which move to make: after
 * an IKE SA went down (ike_down), when a timer fires (retry_now, refresh),
 * and on the API's commands (conn_connect, conn_disconnect, ...).
 */
#include "conn.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "conn_sys.h"
#include "core/secmem.h"
#include "crypto/crypto.h"

#define STATUS_REFRESH_MS 1000
#define CONN_QUEUE 16

static const char *const phase_names[] = {
#define CONN_XX_NAME(name, text) [CONN_##name] = text,
    CONN_PHASE_MAP(CONN_XX_NAME)
#undef CONN_XX_NAME
};

const char *conn_phase_name(conn_phase p)
{
    return (unsigned)p < CONN_PHASE__COUNT ? phase_names[p] : "?";
}

#define BIT(p) (1u << CONN_##p)
/* The moves the machine makes: allowed[from] has bit `to` set. Why each:
 *  IDLE        -> ARMED (on-demand profile in use), NEGOTIATING (connect,
 *                 always-on)
 *  ARMED       -> NEGOTIATING (traffic, connect), IDLE (disconnect)
 *  WAIT_PIN    -> NEGOTIATING (PIN taken), IDLE (wrong PIN, disconnect)
 *  WAIT_CREDENTIALS -> NEGOTIATING (credentials given), IDLE (disconnect)
 *  NEGOTIATING -> UP (CHILD SA installed), WAIT_PIN (locked key),
 *                 WAIT_CREDENTIALS (EAP without a password we may send,
 *                 or always-on after the gateway refused it),
 *                 BACKOFF / IDLE / ARMED (failed: as mode and cause say),
 *                 RESTARTING (install failed), CLOSING (disconnect)
 *  UP          -> RESTARTING (renewal, install error), CLOSING (disconnect,
 *                 on-demand idle), BACKOFF / IDLE / ARMED (SA lost),
 *                 WAIT_CREDENTIALS (always-on: EAP refused on a reauth),
 *                 ROAMING (our path to the gateway moved),
 *                 REAUTHENTICATING (ike.reauth_s due, or a make-before-break
 *                 profile switch).
 *                 A rekey (CHILD or IKE SA) is no move: the tunnel stays UP.
 *  ROAMING     -> UP (the gateway moved the SAs: MOBIKE), RESTARTING (no
 *                 MOBIKE, refused, no answer: reconnect at once), CLOSING
 *                 (disconnect), BACKOFF / IDLE / ARMED (SA lost). A
 *                 reauthentication due meanwhile waits until it is UP again.
 *  REAUTHENTICATING -> UP (the new IKE SA carries the traffic, or it failed
 *                 and the old one carries on), and whatever UP may do (the
 *                 old SA still carries the tunnel meanwhile). When our path
 *                 moves meanwhile the new IKE SA (made on the old path) is
 *                 dropped: -> ROAMING, the old SA follows the path and the
 *                 reauthentication is tried again once UP (a profile switch:
 *                 -> RESTARTING, the new profile's SA made on the new path).
 *  RESTARTING  -> NEGOTIATING (SA down: start over), CLOSING (disconnect),
 *                 BACKOFF / IDLE / ARMED (it closed because of an error)
 *  CLOSING     -> IDLE / ARMED (SA down), RESTARTING (connect meanwhile)
 *  BACKOFF     -> NEGOTIATING (timer, connect), IDLE (disconnect) */
static const unsigned allowed[CONN_PHASE__COUNT] = {
    [CONN_IDLE]        = BIT(ARMED) | BIT(NEGOTIATING),
    [CONN_ARMED]       = BIT(IDLE) | BIT(NEGOTIATING),
    [CONN_WAIT_PIN]    = BIT(IDLE) | BIT(NEGOTIATING),
    [CONN_WAIT_CREDENTIALS] = BIT(IDLE) | BIT(NEGOTIATING),
    [CONN_NEGOTIATING] = BIT(IDLE) | BIT(ARMED) | BIT(WAIT_PIN) | BIT(WAIT_CREDENTIALS) | BIT(UP) |
                         BIT(RESTARTING) | BIT(CLOSING) | BIT(BACKOFF),
    [CONN_UP]          = BIT(IDLE) | BIT(ARMED) | BIT(RESTARTING) | BIT(CLOSING) | BIT(BACKOFF) |
                         BIT(WAIT_CREDENTIALS) | BIT(ROAMING) | BIT(REAUTHENTICATING),
    [CONN_ROAMING]     = BIT(UP) | BIT(IDLE) | BIT(ARMED) | BIT(RESTARTING) | BIT(CLOSING) | BIT(BACKOFF),
    [CONN_REAUTHENTICATING] = BIT(UP) | BIT(IDLE) | BIT(ARMED) | BIT(RESTARTING) | BIT(CLOSING) |
                         BIT(BACKOFF) | BIT(WAIT_CREDENTIALS) | BIT(ROAMING),
    [CONN_RESTARTING]  = BIT(IDLE) | BIT(ARMED) | BIT(NEGOTIATING) | BIT(CLOSING) | BIT(BACKOFF),
    [CONN_CLOSING]     = BIT(IDLE) | BIT(ARMED) | BIT(RESTARTING),
    [CONN_BACKOFF]     = BIT(IDLE) | BIT(NEGOTIATING),
};
#undef BIT

typedef enum conn_event_type {
    EV_IKE_DOWN, EV_REKEY, EV_TRAFFIC, EV_PATH, EV_ADDRESSES, EV_REAUTH_FAILED
} conn_event_type;

typedef struct conn_event {
    conn_event_type type;
    uint32_t attempt;             /* EV_IKE_DOWN: of this attempt only */
    int err;
    ike_fault fault;
    uint32_t spi_in;
    esp_rekey_reason reason;
    bool ours;                    /* EV_ADDRESSES: we asked for the update */
    char detail[320];
} conn_event;

struct conn {
    core_loop *loop;
    core_log *log;
    conn_hooks hooks;
    conn_ops ops;
    bool own_ops;                 /* conn_sys backend, freed with us */

    profile_set *set;
    const profile *prof;
    /* A make-before-break profile switch: the profile the old IKE SA uses
     * is kept (it borrows it) until the next one or the release; switching:
     * the reauthentication under way is the switch. */
    profile_set *prev_set;
    bool switching;
    conn_phase phase;
    /* After a failure or a renewal until the tunnel is up again: the public
     * state says RECONNECTING instead of CONNECTING. */
    bool recovering;
    size_t gw_index;
    unsigned failures;            /* consecutive failed attempts */
    bool backoff_auth;            /* BACKOFF after an authentication failure */
    uint32_t attempt;             /* counts IKE SAs started */
    bool sa_open;                 /* the ops hold an IKE SA (or its path) */
    bool net_armed;               /* the profile's routes (kill switch) in place */
    core_timer retry_timer;
    core_timer refresh_timer;     /* status refresh, on-demand idle check */
    core_timer event_timer;       /* runs the posted events */
    core_timer roam_timer;        /* ROAMING: the gateway's answer is due */
    core_timer reauth_timer;      /* ike.reauth_s: while UP (ROAMING: waits) */
    bool reauth_wanted;           /* conn_reauth_now() while not UP: once UP again */

    conn_event queue[CONN_QUEUE];
    size_t q_head, q_len;

    /* Why the IKE SA is being closed, reported once it is down: the data
     * of the RESTARTING and CLOSING phases, not flags of their own. */
    struct {
        int err;                  /* RESTARTING after an error of ours, else 0 */
        conn_phase then;          /* CLOSING ends in IDLE, or ARMED (on-demand idle) */
        char detail[320];
    } closing;

    char gw_text[64];
    char vip[48];
    uint32_t spi_in, spi_out;     /* installed CHILD SA, 0 = none */
    int64_t connected_since;
    uint64_t traffic_seen;        /* on-demand: packets counted at the last look */
    uint64_t traffic_at_ms;       /* ... and when they last changed */

    /* EAP credentials: from conn_set_credentials (session_*, preferred) or
     * the profile. A password the gateway refused is never sent again
     * (eap_refused): the WAIT_CREDENTIALS phase waits for new ones. */
    char *session_user;
    char *session_pass;           /* secure copy */
    size_t session_pass_len;
    bool eap_refused;
    bool wait_reports_idle;       /* WAIT_CREDENTIALS after a refusal: public IDLE */
    /* The refusal outlives a reload of the same profile (a new profile
     * pointer): kept as HMAC-SHA256 under a random per-handle key over the
     * profile's name, EAP identity and password (never the password itself);
     * dropped when the reloaded profile's password differs or new
     * credentials are set. */
    uint8_t refused_key[32];
    uint8_t refused_fp[32];
    bool refused_fp_set;

    uint64_t reconnects;          /* up again after a failure or renewal */
    uint64_t rekeys;              /* CHILD and IKE SA rekeys */
    uint64_t roams;               /* moves to another path (MOBIKE), NAT mapping changes */
    int64_t last_change;          /* wall clock of the last move */
    char last_reason[128];
};

static bool always_on(const conn *c)
{
    return c->prof && c->prof->mode == PROFILE_MODE_ALWAYS_ON;
}

static bool on_demand(const conn *c)
{
    return c->prof && c->prof->mode == PROFILE_MODE_ON_DEMAND;
}

/* The tunnel carries traffic (a reauthentication may be under way). */
static bool tunnel_up(const conn *c)
{
    return c->phase == CONN_UP || c->phase == CONN_REAUTHENTICATING;
}

static void arm_reauth(conn *c, bool retry);
static void reauth_failed(conn *c, int err, ike_fault fault, const char *detail);

static m2mvpn_state public_state(const conn *c)
{
    switch (c->phase) {
    case CONN_IDLE:
    case CONN_ARMED:
        return M2MVPN_STATE_IDLE;
    case CONN_WAIT_CREDENTIALS:
        /* After the gateway refused the password the tunnel is down until
         * someone gives new credentials (the error stays in the status); a
         * connect that needs them is still connecting. */
        if (c->wait_reports_idle)
            return M2MVPN_STATE_IDLE;
        return c->recovering ? M2MVPN_STATE_RECONNECTING : M2MVPN_STATE_CONNECTING;
    case CONN_WAIT_PIN:
    case CONN_NEGOTIATING:
        return c->recovering ? M2MVPN_STATE_RECONNECTING : M2MVPN_STATE_CONNECTING;
    case CONN_UP:
    case CONN_ROAMING: /* the SAs are kept: still connected */
    case CONN_REAUTHENTICATING:
        return M2MVPN_STATE_CONNECTED;
    case CONN_RESTARTING:
    case CONN_BACKOFF:
        return M2MVPN_STATE_RECONNECTING;
    case CONN_CLOSING:
    default:
        return M2MVPN_STATE_DISCONNECTING;
    }
}

/* The one place the phase changes: logs "A -> B (reason)", refuses a move
 * outside the table (logged, nothing changed) and reports the public state
 * (err: the error that made the move, reason its detail). */
static int set_phase(conn *c, conn_phase to, int err, const char *reason)
{
    conn_phase from = c->phase;
    if (to == from)
        return 0;
    if ((unsigned)to >= CONN_PHASE__COUNT || !(allowed[from] & (1u << to))) {
        LOG_ERR(c->log, "conn", "refused move %s -> %s (%s)", conn_phase_name(from), conn_phase_name(to),
                reason ? reason : "");
        return M2MVPN_E_STATE;
    }
    c->phase = to;
    if (to != CONN_WAIT_CREDENTIALS)
        c->wait_reports_idle = false;
    if (to == CONN_BACKOFF || to == CONN_RESTARTING)
        c->recovering = true;
    else if (to == CONN_IDLE || to == CONN_ARMED)
        c->recovering = false;
    /* ike.reauth_s runs from each IKE SA that carries the tunnel. */
    if (to == CONN_UP && from != CONN_REAUTHENTICATING && from != CONN_ROAMING)
        arm_reauth(c, false);
    else if (to != CONN_UP && to != CONN_REAUTHENTICATING && to != CONN_ROAMING)
        core_timer_cancel(c->loop, &c->reauth_timer);
    if (to != CONN_UP && to != CONN_REAUTHENTICATING && to != CONN_ROAMING)
        c->reauth_wanted = false; /* the next IKE SA reads the credential anyway */
    else if (to == CONN_UP && c->reauth_wanted && c->ops.reauth_start)
        core_timer_arm(c->loop, &c->reauth_timer, 0); /* conn_reauth_now() while it was busy */
    LOG_INFO(c->log, "conn", "%s -> %s (%s)", conn_phase_name(from), conn_phase_name(to),
             reason && *reason ? reason : "-");
    c->last_change = c->ops.wall_time(c->ops.arg);
    snprintf(c->last_reason, sizeof(c->last_reason), "%s", reason ? reason : "");
    if (c->hooks.on_state)
        c->hooks.on_state(c->hooks.arg, public_state(c), err, reason);
    return 0;
}

int conn_try_phase(conn *c, conn_phase to, const char *reason)
{
    return set_phase(c, to, 0, reason);
}

conn_phase conn_get_phase(const conn *c)
{
    return c->phase;
}

/* ---------------------------------------------------------- back-off */

uint64_t conn_backoff_ms(unsigned n, bool auth_failure, uint32_t rnd)
{
    uint64_t delay = auth_failure ? CONN_BACKOFF_AUTH_FIRST_MS : CONN_BACKOFF_FIRST_MS;
    uint64_t cap = auth_failure ? CONN_BACKOFF_AUTH_MAX_MS : CONN_BACKOFF_MAX_MS;
    for (unsigned i = 0; i < n && delay < cap; i++)
        delay *= 2;
    if (delay > cap)
        delay = cap;
    /* Jitter: uniform in [delay * (1 - J), delay * (1 + J)], so that devices
     * that lost the same gateway do not come back in lockstep. */
    uint64_t span = delay * CONN_JITTER_PCT / 100;
    return delay - span + (uint64_t)rnd % (2 * span + 1);
}

/* Failures on our side that a later attempt cannot fix without someone
 * changing the profile or the device: not retried, even always-on (a wrong
 * PIN above all: smartcards and TPMs lock out, DESIGN.md §8). Only asked for
 * local causes: whatever the gateway answered, or anyone who forged its
 * unauthenticated answer, is retried (the same code, say E_INVAL, can be
 * either, so lib/ike says which). */
static bool retry_helps(int err)
{
    switch (err) {
    case M2MVPN_E_PIN:
    case M2MVPN_E_CERT:
    case M2MVPN_E_NOTSUPP:
    case M2MVPN_E_PROFILE:
    case M2MVPN_E_INVAL:
    case M2MVPN_E_CREDENTIALS:
        return false;
    default:
        return true;
    }
}

/* ------------------------------------------------------------ network */

/* The profile's routes from the moment it is in use, before the first
 * connect (DESIGN.md §8): with the kill switch, and always on-demand (the
 * TUN catches the traffic that starts the connection). */
static bool wants_network(const conn *c)
{
    return c->prof && (c->prof->tunnel.kill_switch || on_demand(c));
}

static int arm_network(conn *c, bool hold, char *err, size_t err_len)
{
    int r = c->ops.net_arm(c->ops.arg, c->prof, hold, err, err_len);
    if (r < 0)
        LOG_ERR(c->log, "conn", "%s for profile %s not in place (no connection attempt until it "
                "is): %s", c->prof->tunnel.kill_switch ? "kill switch" : "routes", c->prof->name, err);
    c->net_armed = r == 0;
    return r;
}

/* The same where nothing waits for the error (it is logged). */
static void rearm_network(conn *c, bool hold)
{
    char err[320];
    arm_network(c, hold, err, sizeof(err));
}

/* Down on purpose: without the kill switch nothing of the tunnel stays (TUN,
 * address, routes); with it, the routes keep protected traffic in the TUN
 * until the profile is removed on purpose (conn_remove_profile). */
static void drop_network_unless_kill_switch(conn *c)
{
    if (c->prof && c->prof->tunnel.kill_switch) {
        if (c->net_armed)
            rearm_network(c, false); /* nothing held any more */
        return;
    }
    c->ops.net_release(c->ops.arg, true);
    c->net_armed = false;
}

/* ------------------------------------------------------------- attempts */

static void drop_child(conn *c)
{
    if (c->spi_in)
        c->ops.child_remove(c->ops.arg, c->spi_in);
    c->spi_in = c->spi_out = 0;
    c->vip[0] = '\0';
    c->connected_since = 0;
}

static void release_sa(conn *c)
{
    drop_child(c);
    if (c->sa_open)
        c->ops.sa_release(c->ops.arg);
    c->sa_open = false;
    core_timer_cancel(c->loop, &c->refresh_timer);
    core_timer_cancel(c->loop, &c->roam_timer);
}

/* Stay down: IDLE, or ARMED again on-demand unless `stop` (a disconnect,
 * or a failure a retry cannot fix). After a failure, traffic starts the
 * tunnel again only after the back-off (retry_now arms the trigger): an
 * application that keeps sending must not make it hammer the gateway. */
static void settle(conn *c, bool stop, int err, const char *reason)
{
    core_timer_cancel(c->loop, &c->retry_timer);
    if (on_demand(c) && !stop) {
        rearm_network(c, err == 0); /* held packets of the failed attempt are dropped */
        set_phase(c, CONN_ARMED, err, reason);
        if (err) {
            bool auth = err == M2MVPN_E_AUTH_LOCAL || err == M2MVPN_E_AUTH_PEER;
            uint64_t delay = conn_backoff_ms(c->failures++, auth, c->ops.random(c->ops.arg));
            LOG_INFO(c->log, "conn", "on-demand: traffic starts the tunnel again in %llu ms",
                     (unsigned long long)delay);
            core_timer_arm(c->loop, &c->retry_timer, delay);
        }
        return;
    }
    drop_network_unless_kill_switch(c);
    set_phase(c, CONN_IDLE, err, reason);
}

static void fail(conn *c, int err, ike_fault fault, const char *detail);

/* The EAP user and password for this attempt: false if there is no
 * password we may send (none given, or the one we have was refused). */
static bool eap_credentials(const conn *c, conn_eap *eap)
{
    memset(eap, 0, sizeof(*eap));
    if (c->eap_refused)
        return false;
    eap->user = c->session_user ? c->session_user : c->prof->eap.identity;
    if (c->session_pass) {
        eap->pass = c->session_pass;
        eap->pass_len = c->session_pass_len;
    } else if (c->prof->eap.password) {
        eap->pass = c->prof->eap.password;
        eap->pass_len = strlen(c->prof->eap.password);
    }
    return eap->pass != NULL;
}

/* WAIT_CREDENTIALS: ask (CREDENTIALS_REQUIRED) and make no attempt until
 * conn_set_credentials() answers. why: the refusal that led here (the
 * move then reports err/detail, the public state IDLE), or NULL. */
static void wait_for_credentials(conn *c, const char *why, int err, const char *detail)
{
    char ask[320];
    const char *user = c->session_user ? c->session_user : c->prof->eap.identity;
    snprintf(ask, sizeof(ask), "%s%sEAP password for '%s' (profile %s)", why ? why : "",
             why ? "; waiting for new credentials: " : "", user ? user : "", c->prof->name);
    release_sa(c); /* the path is opened anew when they come */
    c->wait_reports_idle = why != NULL;
    if (set_phase(c, CONN_WAIT_CREDENTIALS, err, why ? detail : "waiting for the EAP credentials") < 0)
        return;
    LOG_INFO(c->log, "conn", "waiting for the %s", why ? "new credentials" : ask);
    if (c->hooks.on_event)
        c->hooks.on_event(c->hooks.arg, M2MVPN_EVENT_CREDENTIALS_REQUIRED, M2MVPN_E_CREDENTIALS, ask);
}

/* The fingerprint of the profile's EAP credentials (see refused_fp). */
static bool profile_eap_fp(const conn *c, const profile *p, uint8_t out[32])
{
    static const uint8_t zero = 0;
    const char *id = p->eap.identity ? p->eap.identity : "";
    const char *pw = p->eap.password ? p->eap.password : "";
    crypto_span parts[] = {
        { (const uint8_t *)p->name, strlen(p->name) }, { &zero, 1 },
        { (const uint8_t *)id, strlen(id) }, { &zero, 1 },
        { (const uint8_t *)pw, strlen(pw) },
    };
    return crypto_prf_oneshot(PRF_HMAC_SHA2_256, c->refused_key, sizeof(c->refused_key), parts,
                              sizeof(parts) / sizeof(parts[0]), out, 32) == 0;
}

static void forget_session_credentials(conn *c)
{
    free(c->session_user);
    c->session_user = NULL;
    secure_free(c->session_pass, c->session_pass_len);
    c->session_pass = NULL;
    c->session_pass_len = 0;
}

/* The IKE SA over the path, once the credentials are ready. */
static void start_sa(conn *c)
{
    char err[512] = "";
    conn_eap eap;
    bool is_eap = c->prof->auth == PROFILE_AUTH_EAP;
    if (is_eap && !eap_credentials(c, &eap)) {
        wait_for_credentials(c, NULL, 0, NULL);
        return;
    }
    int r = c->ops.sa_start(c->ops.arg, c->prof, is_eap ? &eap : NULL, err, sizeof(err));
    if (r < 0)
        fail(c, r, IKE_FAULT_LOCAL, err);
}

static void start_attempt(conn *c, const char *reason)
{
    char err[512] = "", what[160] = "";
    bool pin_needed = false;
    core_timer_cancel(c->loop, &c->retry_timer);
    if (set_phase(c, CONN_NEGOTIATING, 0, reason) < 0)
        return;
    c->attempt++;
    c->sa_open = true; /* the path at least: released with the SA */
    int r = 0;
    /* No attempt without the kill switch: the tunnel must not come up, or
     * be waited for, while protected traffic could leave in plaintext. */
    if (wants_network(c) && !c->net_armed) {
        r = arm_network(c, on_demand(c), err, sizeof(err));
        if (!c->prof->tunnel.kill_switch)
            r = 0; /* on-demand without it: only the trigger is missing */
    }
    conn_eap eap;
    if (r == 0 && c->prof->auth == PROFILE_AUTH_EAP && !eap_credentials(c, &eap)) {
        wait_for_credentials(c, NULL, 0, NULL); /* no path opened for nothing */
        return;
    }
    if (r == 0)
        r = c->ops.cred_load(c->ops.arg, c->prof, &pin_needed, what, sizeof(what), err, sizeof(err));
    if (r == 0)
        r = c->ops.path_open(c->ops.arg, c->prof, c->gw_index, c->gw_text, sizeof(c->gw_text), err,
                             sizeof(err));
    if (r < 0) {
        fail(c, r, IKE_FAULT_LOCAL, err);
        return;
    }
    if (pin_needed) {
        set_phase(c, CONN_WAIT_PIN, 0, "waiting for the PIN");
        LOG_INFO(c->log, "conn", "waiting for the PIN of %s", what);
        if (c->hooks.on_event)
            c->hooks.on_event(c->hooks.arg, M2MVPN_EVENT_PIN_REQUIRED, M2MVPN_E_PIN, what);
        return;
    }
    start_sa(c);
}

static void retry_now(void *arg)
{
    conn *c = arg;
    if (c->phase == CONN_BACKOFF)
        start_attempt(c, "retrying");
    else if (c->phase == CONN_ARMED)
        rearm_network(c, true); /* the next packet starts it */
}

static void schedule_retry(conn *c, int err, const char *detail)
{
    bool auth = err == M2MVPN_E_AUTH_LOCAL || err == M2MVPN_E_AUTH_PEER;
    /* Unreachable gateways: the next one in the list (failover). */
    if (err == M2MVPN_E_TIMEOUT || err == M2MVPN_E_NETWORK)
        c->gw_index = (c->gw_index + 1) % c->prof->n_gateways;
    uint64_t delay = conn_backoff_ms(c->failures, auth, c->ops.random(c->ops.arg));
    c->failures++;
    c->backoff_auth = auth;
    LOG_INFO(c->log, "conn", "reconnecting in %llu ms", (unsigned long long)delay);
    set_phase(c, CONN_BACKOFF, err, detail);
    core_timer_arm(c->loop, &c->retry_timer, delay);
}

/* An attempt or a running tunnel failed (err != 0): retry, arm again or
 * stay down, as the mode and the cause say. */
static void fail(conn *c, int err, ike_fault fault, const char *detail)
{
    release_sa(c);
    if (err == M2MVPN_E_AUTH_LOCAL || err == M2MVPN_E_AUTH_PEER)
        if (c->hooks.on_event)
            c->hooks.on_event(c->hooks.arg, M2MVPN_EVENT_AUTH_FAILED, err, detail);
    if (err == M2MVPN_E_AUTH_LOCAL && fault == IKE_FAULT_LOCAL && c->prof->auth == PROFILE_AUTH_EAP) {
        /* The gateway refused our EAP credentials (lib/ike says LOCAL: the
         * password is ours): reported once, never sent again (an account
         * would lock). Always-on waits for new ones; on-demand and manual
         * stay down and ask on the next connect. */
        c->eap_refused = true;
        c->refused_fp_set = profile_eap_fp(c, c->prof, c->refused_fp);
        forget_session_credentials(c);
        if (always_on(c))
            wait_for_credentials(c, "the gateway refused the credentials", err, detail);
        else
            settle(c, true, err, detail);
        return;
    }
    if (fault == IKE_FAULT_LOCAL && !retry_helps(err))
        settle(c, true, err, detail);
    else if (always_on(c))
        schedule_retry(c, err, detail);
    else
        settle(c, false, err, detail);
}

/* Close the IKE SA on purpose and start over once it is down. err/detail:
 * why, for the status (0: routine renewal). */
static void close_and_restart(conn *c, int err, const char *detail)
{
    c->closing.err = err;
    snprintf(c->closing.detail, sizeof(c->closing.detail), "%s", detail ? detail : "");
    set_phase(c, CONN_RESTARTING, 0, detail && *detail ? detail : "renewing the tunnel");
    c->ops.sa_close(c->ops.arg); /* the down event follows */
}

static void ike_down(conn *c, int err, ike_fault fault, const char *detail)
{
    char why[320];
    switch (c->phase) {
    case CONN_CLOSING:
        release_sa(c);
        settle(c, c->closing.then != CONN_ARMED, 0, c->closing.detail[0] ? c->closing.detail : "closed");
        return;
    case CONN_RESTARTING:
        release_sa(c);
        if (c->closing.err) {
            /* Our datapath or supervisor failed: its error, not the Delete's. */
            snprintf(why, sizeof(why), "%s", c->closing.detail);
            fail(c, c->closing.err, IKE_FAULT_LOCAL, why);
            return;
        }
        start_attempt(c, "renewing the tunnel");
        return;
    case CONN_NEGOTIATING:
    case CONN_UP:
    case CONN_ROAMING:
    case CONN_REAUTHENTICATING:
        if (err == 0) { /* closed without us asking: nothing to retry */
            release_sa(c);
            settle(c, true, 0, detail);
            return;
        }
        fail(c, err, fault, detail);
        return;
    default:
        release_sa(c);
        return;
    }
}

/* ---------------------------------------------------- posted events */

static void post(conn *c, const conn_event *ev)
{
    /* One traffic event, and one rekey request per SA, is all it takes
     * (the datapath raises a request per lifetime kind). */
    for (size_t i = 0; ev->type != EV_IKE_DOWN && ev->type != EV_ADDRESSES && i < c->q_len; i++) {
        const conn_event *q = &c->queue[(c->q_head + i) % CONN_QUEUE];
        if (q->type == ev->type && (ev->type == EV_TRAFFIC || q->spi_in == ev->spi_in))
            return;
    }
    if (c->q_len == CONN_QUEUE) {
        LOG_ERR(c->log, "conn", "event queue full: event %d dropped", (int)ev->type);
        return;
    }
    c->queue[(c->q_head + c->q_len++) % CONN_QUEUE] = *ev;
    core_timer_arm(c->loop, &c->event_timer, 0);
}

void conn_post_ike_down(conn *c, int err, ike_fault fault, const char *detail)
{
    conn_event ev = { .type = EV_IKE_DOWN, .attempt = c->attempt, .err = err, .fault = fault };
    snprintf(ev.detail, sizeof(ev.detail), "%s", detail ? detail : "");
    post(c, &ev);
}

void conn_post_rekey(conn *c, uint32_t spi_in, esp_rekey_reason reason)
{
    conn_event ev = { .type = EV_REKEY, .spi_in = spi_in, .reason = reason };
    post(c, &ev);
}

void conn_post_traffic(conn *c)
{
    conn_event ev = { .type = EV_TRAFFIC };
    post(c, &ev);
}

void conn_post_path_changed(conn *c, const char *reason)
{
    conn_event ev = { .type = EV_PATH };
    snprintf(ev.detail, sizeof(ev.detail), "%s", reason ? reason : "");
    post(c, &ev);
}

void conn_post_addresses_updated(conn *c, int err, bool ours, const char *detail)
{
    conn_event ev = { .type = EV_ADDRESSES, .err = err, .ours = ours, .attempt = c->attempt };
    snprintf(ev.detail, sizeof(ev.detail), "%s", detail ? detail : "");
    post(c, &ev);
}

void conn_post_reauth_failed(conn *c, int err, ike_fault fault, const char *detail)
{
    conn_event ev = { .type = EV_REAUTH_FAILED, .attempt = c->attempt, .err = err, .fault = fault };
    snprintf(ev.detail, sizeof(ev.detail), "%s", detail ? detail : "");
    post(c, &ev);
}

/* ------------------------------------------------------------ roaming */

/* The fastest reconnect: the old IKE SA goes (its Delete sent once, not
 * waited for: the path it was made on may be gone) and a new attempt starts
 * at once, no back-off. The kill switch holds meanwhile: no SA, routes
 * into the TUN. */
static void reconnect_now(conn *c, const char *why)
{
    core_timer_cancel(c->loop, &c->roam_timer);
    if (set_phase(c, CONN_RESTARTING, 0, why) < 0)
        return;
    c->ops.sa_close(c->ops.arg);
    release_sa(c);
    start_attempt(c, why);
}

/* UP (or REAUTHENTICATING) -> ROAMING: the gateway asked to move the SAs
 * to our new path (MOBIKE); without MOBIKE, or when no update can be sent,
 * reconnect at once. */
static void roam_start(conn *c, const char *phase_reason, const char *reason)
{
    char why[400];
    if (set_phase(c, CONN_ROAMING, 0, phase_reason) < 0)
        return;
    int r = c->ops.roam ? c->ops.roam(c->ops.arg, reason) : M2MVPN_E_NOTSUPP;
    if (r < 0) {
        snprintf(why, sizeof(why), "%s; %s: reconnecting", reason,
                 r == M2MVPN_E_NOTSUPP ? "the gateway has no MOBIKE" : "no address update possible");
        reconnect_now(c, why);
        return;
    }
    core_timer_arm(c->loop, &c->roam_timer, CONN_ROAM_TIMEOUT_MS);
}

/* Our path to the gateway moved. Up: follow it with MOBIKE (ROAMING) or
 * reconnect. Waiting to retry: try now, the new path may work. */
static void on_path_changed(conn *c, const char *reason)
{
    char why[400];
    switch (c->phase) {
    case CONN_UP:
        roam_start(c, reason, reason);
        return;
    case CONN_REAUTHENTICATING: {
        /* The new IKE SA was made on the old path: it goes, and the old one
         * (which carries the tunnel) follows the path. A profile switch
         * starts over with the new profile, on the new path. */
        if (c->ops.reauth_abort)
            c->ops.reauth_abort(c->ops.arg);
        if (c->switching) {
            c->switching = false;
            snprintf(why, sizeof(why), "%s; break-before-make: the new profile's IKE SA was on the old path",
                     reason);
            close_and_restart(c, 0, why);
            return;
        }
        snprintf(why, sizeof(why), "%s; reauthentication dropped, tried again once moved", reason);
        LOG_INFO(c->log, "conn", "%s", why);
        arm_reauth(c, true);
        roam_start(c, why, reason);
        return;
    }
    case CONN_ROAMING:
        /* Moved again before the answer: the ops send a newer update. */
        if (c->ops.roam(c->ops.arg, reason) < 0) {
            snprintf(why, sizeof(why), "%s; no address update possible: reconnecting", reason);
            reconnect_now(c, why);
            return;
        }
        core_timer_arm(c->loop, &c->roam_timer, CONN_ROAM_TIMEOUT_MS);
        return;
    case CONN_BACKOFF:
        if (c->backoff_auth) {
            /* A new path does not fix refused credentials: the longer
             * schedule holds (a flapping path would cut it short). */
            LOG_INFO(c->log, "conn", "%s: waiting on (the last attempt failed authentication)", reason);
            return;
        }
        snprintf(why, sizeof(why), "%s: retrying now", reason);
        start_attempt(c, why);
        return;
    default:
        return; /* a running attempt finds its path itself; the others have none */
    }
}

static void roam_timeout(void *arg)
{
    conn *c = arg;
    if (c->phase != CONN_ROAMING)
        return;
    char why[96];
    snprintf(why, sizeof(why), "no answer to the address update within %u ms: reconnecting",
             (unsigned)CONN_ROAM_TIMEOUT_MS);
    reconnect_now(c, why);
}

static void on_addresses_updated(conn *c, int err, bool ours, const char *detail)
{
    if (c->phase == CONN_ROAMING && ours) {
        char why[400];
        if (err < 0) {
            snprintf(why, sizeof(why), "%s: reconnecting", detail);
            reconnect_now(c, why);
            return;
        }
        core_timer_cancel(c->loop, &c->roam_timer);
        c->roams++;
        set_phase(c, CONN_UP, 0, detail);
        core_timer_arm(c->loop, &c->refresh_timer, STATUS_REFRESH_MS);
        if (c->hooks.on_event)
            c->hooks.on_event(c->hooks.arg, M2MVPN_EVENT_ROAMED, 0, detail);
        return;
    }
    if (c->phase == CONN_UP && !ours && err == 0) {
        /* A NAT mapping changed under us and lib/ike moved the SAs: no
         * move of the machine, but a roam. */
        c->roams++;
        if (c->hooks.on_event)
            c->hooks.on_event(c->hooks.arg, M2MVPN_EVENT_ROAMED, 0, detail);
    }
}

/* The CHILD SA nears its end (soft lifetime, bytes, sequence numbers):
 * rekey it (CREATE_CHILD_SA, lib/ike), no move of the machine; the result
 * arrives through conn_child_rekeyed(). Only when no rekey can start and
 * the SA no longer sends (a hard reason) is the tunnel built anew. */
static void on_rekey(conn *c, uint32_t spi_in, esp_rekey_reason reason)
{
    if (!tunnel_up(c) || spi_in != c->spi_in)
        return;
    LOG_INFO(c->log, "conn", "CHILD SA %08x: %s; rekeying", spi_in, esp_rekey_reason_name(reason));
    if (c->ops.child_rekey(c->ops.arg, spi_in) < 0 && esp_rekey_reason_is_hard(reason)) {
        char why[128];
        snprintf(why, sizeof(why), "CHILD SA %08x: %s and no rekey possible", spi_in,
                 esp_rekey_reason_name(reason));
        close_and_restart(c, 0, why);
    }
}

void conn_child_rekeyed(conn *c, uint32_t old_spi_in, uint32_t spi_in, uint32_t spi_out, int err,
                        const char *detail)
{
    if (err < 0) {
        if (tunnel_up(c)) /* else the SA is on its way down already */
            close_and_restart(c, err, detail);
        return;
    }
    /* Installed: the current SA now, removed with the tunnel whatever the
     * phase; counted and reported while the tunnel is up. */
    c->spi_in = spi_in;
    c->spi_out = spi_out;
    if (!tunnel_up(c)) {
        LOG_DBG(c->log, "conn", "CHILD SA %08x rekeyed while %s", old_spi_in, conn_phase_name(c->phase));
        return;
    }
    c->rekeys++;
    char what[96];
    snprintf(what, sizeof(what), "CHILD SA %08x replaced by %08x/%08x", old_spi_in, spi_in, spi_out);
    LOG_INFO(c->log, "conn", "%s", what);
    if (c->hooks.on_event)
        c->hooks.on_event(c->hooks.arg, M2MVPN_EVENT_REKEYED, 0, what);
}

void conn_ike_rekeyed(conn *c)
{
    if (!tunnel_up(c))
        return;
    c->rekeys++;
    LOG_INFO(c->log, "conn", "IKE SA rekeyed");
    if (c->hooks.on_event)
        c->hooks.on_event(c->hooks.arg, M2MVPN_EVENT_REKEYED, 0, "IKE SA rekeyed");
}

static void run_events(void *arg)
{
    conn *c = arg;
    while (c->q_len) {
        conn_event ev = c->queue[c->q_head];
        c->q_head = (c->q_head + 1) % CONN_QUEUE;
        c->q_len--;
        switch (ev.type) {
        case EV_IKE_DOWN:
            if (c->sa_open && ev.attempt == c->attempt)
                ike_down(c, ev.err, ev.fault, ev.detail);
            break;
        case EV_REKEY:
            on_rekey(c, ev.spi_in, ev.reason);
            break;
        case EV_TRAFFIC:
            if (c->phase == CONN_ARMED)
                start_attempt(c, "traffic for a protected network");
            break;
        case EV_PATH:
            on_path_changed(c, ev.detail);
            break;
        case EV_ADDRESSES:
            if (c->sa_open && ev.attempt == c->attempt)
                on_addresses_updated(c, ev.err, ev.ours, ev.detail);
            break;
        case EV_REAUTH_FAILED:
            if (ev.attempt == c->attempt)
                reauth_failed(c, ev.err, ev.fault, ev.detail);
            break;
        }
    }
}

/* ------------------------------------------------------------ up */

/* ---- reauthentication (RFC 7296 §2.8.3), make-before-break: UP ->
 * REAUTHENTICATING when ike.reauth_s is due (a random point between 80 and
 * 90 % of it, from the IKE SA that carries the tunnel), a new IKE SA and
 * CHILD SA next to the current ones; -> UP once the new one carries the
 * traffic (the old one is then deleted) or, if it failed, with the old one
 * (tried again after a tenth of reauth_s, at least a second). */

static void arm_reauth(conn *c, bool retry)
{
    core_timer_cancel(c->loop, &c->reauth_timer);
    uint64_t life_ms = c->prof ? (uint64_t)c->prof->ike.reauth_s * 1000 : 0;
    if (retry && c->reauth_wanted && c->ops.reauth_start) {
        /* conn_reauth_now() (a renewed certificate): again soon, whatever reauth_s says */
        core_timer_arm(c->loop, &c->reauth_timer, 2000);
        return;
    }
    if (!life_ms || !c->ops.reauth_start)
        return;
    uint64_t tenth = life_ms / 10, delay;
    if (retry)
        delay = tenth > 1000 ? tenth : 1000;
    else
        delay = life_ms - tenth - c->ops.random(c->ops.arg) % (tenth + 1);
    core_timer_arm(c->loop, &c->reauth_timer, delay);
}

static void reauth_now(void *arg)
{
    conn *c = arg;
    c->reauth_wanted = false;
    if (c->phase == CONN_ROAMING) { /* the new IKE SA goes on the new path */
        arm_reauth(c, true);
        return;
    }
    if (c->phase != CONN_UP)
        return;
    char err[512] = "";
    conn_eap eap;
    bool is_eap = c->prof->auth == PROFILE_AUTH_EAP;
    if (is_eap && !eap_credentials(c, &eap)) {
        LOG_WARN(c->log, "conn", "reauthentication due, but no EAP password may be sent: the tunnel "
                 "stays on its IKE SA");
        return;
    }
    if (set_phase(c, CONN_REAUTHENTICATING, 0, "reauthentication due") < 0)
        return;
    int r = c->ops.reauth_start(c->ops.arg, c->prof, is_eap ? &eap : NULL, err, sizeof(err));
    if (r < 0) {
        char why[600];
        snprintf(why, sizeof(why), "reauthentication could not start: %s", err);
        LOG_WARN(c->log, "conn", "%s", why);
        set_phase(c, CONN_UP, 0, why);
        arm_reauth(c, true);
    }
}

static void reauth_failed(conn *c, int err, ike_fault fault, const char *detail)
{
    if (c->phase != CONN_REAUTHENTICATING)
        return;
    char why[400];
    snprintf(why, sizeof(why), "reauthentication failed, the current IKE SA carries on: %s", detail);
    LOG_WARN(c->log, "conn", "%s", why);
    bool auth = err == M2MVPN_E_AUTH_LOCAL || err == M2MVPN_E_AUTH_PEER;
    if (auth && c->hooks.on_event)
        c->hooks.on_event(c->hooks.arg, M2MVPN_EVENT_AUTH_FAILED, err, detail);
    if (c->switching) {
        /* The old SA still runs the previous profile: start over with the
         * new one, the shortest gap left. */
        c->switching = false;
        snprintf(why, sizeof(why), "break-before-make: the new profile's IKE SA failed: %s", detail);
        close_and_restart(c, 0, why);
        return;
    }
    set_phase(c, CONN_UP, 0, why);
    if (err == M2MVPN_E_AUTH_LOCAL && fault == IKE_FAULT_LOCAL && c->prof->auth == PROFILE_AUTH_EAP) {
        /* The password was refused: never sent again (an account would
         * lock); the tunnel lasts as long as its IKE SA does. */
        c->eap_refused = true;
        c->refused_fp_set = profile_eap_fp(c, c->prof, c->refused_fp);
        forget_session_credentials(c);
        return;
    }
    arm_reauth(c, true);
}

/* Records the CHILD SA now carrying the traffic: its SPIs, and the virtual IP the status shows
   (one: IPv4 if assigned, else IPv6). */
static void take_child(conn *c, const ike_child_result *r)
{
    c->spi_in = r->spi_in;
    c->spi_out = r->spi_out;
    if (r->has_vip)
        inet_ntop(AF_INET, r->vip, c->vip, sizeof(c->vip));
    else if (r->has_vip6)
        inet_ntop(AF_INET6, r->vip6, c->vip, sizeof(c->vip));
}

void conn_reauth_established(conn *c, const ike_child_result *r)
{
    char err[320] = "";
    if (c->phase != CONN_REAUTHENTICATING) {
        LOG_DBG(c->log, "conn", "reauthenticated IKE SA up while %s: not used", conn_phase_name(c->phase));
        return;
    }
    uint32_t old_in = c->spi_in;
    int rc = c->ops.reauth_install(c->ops.arg, c->prof, r, err, sizeof(err));
    if (rc < 0) {
        reauth_failed(c, rc, IKE_FAULT_LOCAL, err);
        return;
    }
    char old_vip[sizeof(c->vip)];
    snprintf(old_vip, sizeof(old_vip), "%s", c->vip);
    take_child(c, r);
    char what[320];
    if (c->switching) {
        c->switching = false;
        c->connected_since = c->ops.wall_time(c->ops.arg);
        const profile_gateway *g = &c->prof->gateways[0];
        struct in6_addr a6;
        snprintf(c->gw_text, sizeof(c->gw_text), inet_pton(AF_INET6, g->host, &a6) == 1 ? "[%s]:%u" : "%s:%u",
                 g->host, (unsigned)g->port);
        /* The new SA carried traffic before the old one went; only a new
         * virtual IP breaks what is bound to the old one. */
        char how[160] = "make-before-break";
        if (strcmp(old_vip, c->vip) != 0)
            snprintf(how, sizeof(how), "shortest gap (virtual IP %s, was %s)", c->vip[0] ? c->vip : "none",
                     old_vip[0] ? old_vip : "none");
        snprintf(what, sizeof(what), "%s: switched to profile %s at %s (CHILD SA %08x replaced by %08x/%08x)",
                 how, c->prof->name, c->gw_text, old_in, r->spi_in, r->spi_out);
        LOG_INFO(c->log, "conn", "%s", what);
        set_phase(c, CONN_UP, 0, what);
        arm_reauth(c, false);
        /* The public state stays CONNECTED: the switch is reported as a
         * STATE_CHANGED of its own, saying how it went. */
        if (c->hooks.on_event)
            c->hooks.on_event(c->hooks.arg, M2MVPN_EVENT_STATE_CHANGED, 0, what);
        return;
    }
    c->rekeys++;
    snprintf(what, sizeof(what), "IKE SA reauthenticated: CHILD SA %08x replaced by %08x/%08x", old_in,
             r->spi_in, r->spi_out);
    LOG_INFO(c->log, "conn", "%s", what);
    set_phase(c, CONN_UP, 0, "reauthenticated");
    arm_reauth(c, false);
    if (c->reauth_wanted) /* asked for during this one (a new credential) */
        core_timer_arm(c->loop, &c->reauth_timer, 0);
    if (c->hooks.on_event)
        c->hooks.on_event(c->hooks.arg, M2MVPN_EVENT_REKEYED, 0, what);
}

/* Status refresh while up, and on-demand: close after the idle time. */
static void refresh(void *arg)
{
    conn *c = arg;
    if (!tunnel_up(c))
        return;
    uint64_t now = c->loop->clock_ms();
    uint64_t seen = c->ops.traffic(c->ops.arg);
    if (seen != c->traffic_seen) {
        c->traffic_seen = seen;
        c->traffic_at_ms = now;
    }
    uint32_t idle_s = c->prof->tunnel.on_demand_idle_s;
    if (on_demand(c) && idle_s && now - c->traffic_at_ms >= (uint64_t)idle_s * 1000) {
        char why[64];
        snprintf(why, sizeof(why), "no traffic for %u s", (unsigned)idle_s);
        c->closing.err = 0;
        c->closing.then = CONN_ARMED;
        snprintf(c->closing.detail, sizeof(c->closing.detail), "%s", why);
        set_phase(c, CONN_CLOSING, 0, why);
        c->ops.sa_close(c->ops.arg);
        return;
    }
    if (c->hooks.on_state) /* same state: status refresh only */
        c->hooks.on_state(c->hooks.arg, M2MVPN_STATE_CONNECTED, 0, NULL);
    core_timer_arm(c->loop, &c->refresh_timer, STATUS_REFRESH_MS);
}

void conn_ike_established(conn *c, const ike_child_result *r)
{
    char err[320] = "";
    if (c->phase != CONN_NEGOTIATING) {
        LOG_DBG(c->log, "conn", "CHILD SA established while %s: not used", conn_phase_name(c->phase));
        return;
    }
    int rc = c->ops.child_install(c->ops.arg, c->prof, r, err, sizeof(err));
    if (rc < 0) {
        c->spi_in = r->spi_in; /* whatever was installed goes with the SA */
        close_and_restart(c, rc, err);
        return;
    }
    take_child(c, r);
    c->connected_since = c->ops.wall_time(c->ops.arg);
    c->failures = 0;
    if (c->recovering)
        c->reconnects++;
    c->traffic_seen = c->ops.traffic(c->ops.arg);
    c->traffic_at_ms = c->loop->clock_ms();
    char why[96];
    snprintf(why, sizeof(why), "CHILD SA %08x up with %s", r->spi_in, c->gw_text);
    set_phase(c, CONN_UP, 0, why);
    core_timer_arm(c->loop, &c->refresh_timer, STATUS_REFRESH_MS);
}

/* ---------------------------------------------------------- control */

int conn_new_with_ops(core_loop *loop, core_log *log, const conn_hooks *hooks, const conn_ops *ops,
                      conn **ret)
{
    conn *c = calloc(1, sizeof(*c));
    if (!c)
        return M2MVPN_E_NOMEM;
    c->loop = loop;
    c->log = log;
    c->hooks = *hooks;
    c->ops = *ops;
    c->phase = CONN_IDLE;
    if (crypto_random(c->refused_key, sizeof(c->refused_key)) < 0) {
        free(c);
        return M2MVPN_E_CRYPTO;
    }
    core_timer_init(&c->retry_timer, retry_now, c);
    core_timer_init(&c->refresh_timer, refresh, c);
    core_timer_init(&c->event_timer, run_events, c);
    core_timer_init(&c->roam_timer, roam_timeout, c);
    core_timer_init(&c->reauth_timer, reauth_now, c);
    *ret = c;
    return 0;
}

int conn_new(core_loop *loop, core_log *log, const conn_hooks *hooks, conn **ret)
{
    conn_ops ops;
    int r = conn_sys_new(loop, log, &ops);
    if (r < 0)
        return r;
    r = conn_new_with_ops(loop, log, hooks, &ops, ret);
    if (r < 0) {
        conn_sys_free(ops.arg);
        return r;
    }
    (*ret)->own_ops = true;
    conn_sys_bind(ops.arg, *ret);
    return 0;
}

static void release_profile(conn *c, bool remove_network)
{
    core_timer_cancel(c->loop, &c->retry_timer);
    core_timer_cancel(c->loop, &c->refresh_timer);
    core_timer_cancel(c->loop, &c->reauth_timer);
    if (c->sa_open)
        c->ops.sa_close(c->ops.arg); /* best effort Delete; no waiting here */
    release_sa(c);
    c->q_len = 0; /* the events of what was just released */
    c->ops.net_release(c->ops.arg, remove_network);
    c->net_armed = false;
    c->ops.cred_release(c->ops.arg);
    c->closing.err = 0;
    c->closing.detail[0] = '\0';
    c->eap_refused = false;
    profile_set_free(c->set); /* drops our reference */
    c->set = NULL;
    c->prof = NULL;
    profile_set_free(c->prev_set); /* its IKE SA went with release_sa */
    c->prev_set = NULL;
    c->switching = false;
}

/* Back to IDLE whatever the phase (the profile went away). */
static void force_idle(conn *c, const char *reason, bool report)
{
    if (c->phase == CONN_IDLE)
        return;
    m2mvpn_state old = public_state(c);
    /* Every phase may end in IDLE except through the table's order; a
     * profile removal is not a move of the machine but its reset. */
    conn_phase from = c->phase;
    c->phase = CONN_IDLE;
    c->recovering = false;
    LOG_INFO(c->log, "conn", "%s -> %s (%s)", conn_phase_name(from), conn_phase_name(CONN_IDLE), reason);
    c->last_change = c->ops.wall_time(c->ops.arg);
    snprintf(c->last_reason, sizeof(c->last_reason), "%s", reason);
    if (report && old != M2MVPN_STATE_IDLE && c->hooks.on_state)
        c->hooks.on_state(c->hooks.arg, M2MVPN_STATE_IDLE, 0, reason);
}

void conn_free(conn *c)
{
    if (!c)
        return;
    c->hooks.on_state = NULL;
    c->hooks.on_event = NULL;
    release_profile(c, false);
    core_timer_cancel(c->loop, &c->event_timer);
    core_timer_cancel(c->loop, &c->roam_timer);
    if (c->own_ops)
        conn_sys_free(c->ops.arg);
    forget_session_credentials(c);
    secure_wipe(c->refused_key, sizeof(c->refused_key));
    free(c);
}

/* A profile switch while the tunnel is up, make-before-break: the new
 * profile's IKE SA and CHILD SA come up next to the old ones (as a
 * reauthentication does), with the same gateway or another one (the new
 * profile's first), the traffic moves, then the old IKE SA goes. Possible
 * when the new profile keeps what the running tunnel is built on: the TUN,
 * the kill switch and the mode (the network is then reconfigured in place).
 * Gap-free when the virtual IP stays; if the (other) gateway assigns another
 * one, the tunnel takes it in place: the shortest gap, for the connections
 * bound to the old one (conn_reauth_established says which). Otherwise
 * false and why: the switch is break-before-make. */
static bool switch_make_before_break(conn *c, profile_set *set, const profile *p, char *why, size_t len)
{
    const profile *o = c->prof;
    const char *ta = o->tunnel.tun_name ? o->tunnel.tun_name : "m2m0";
    const char *tb = p->tunnel.tun_name ? p->tunnel.tun_name : "m2m0";
    char err[512] = "";
    if (c->phase != CONN_UP)
        snprintf(why, len, "the tunnel is %s", conn_phase_name(c->phase));
    else if (!c->ops.reauth_start || !c->ops.reauth_install)
        snprintf(why, len, "no second IKE SA possible here");
    else if (strcmp(ta, tb) != 0)
        snprintf(why, len, "another TUN (%s, was %s)", tb, ta);
    else if (o->tunnel.kill_switch != p->tunnel.kill_switch)
        snprintf(why, len, "the kill switch setting differs");
    else if (o->mode != p->mode)
        snprintf(why, len, "another mode");
    else if (o->tunnel.request_vip != p->tunnel.request_vip)
        snprintf(why, len, "the virtual IP request differs");
    else if (p->auth == PROFILE_AUTH_EAP || o->auth == PROFILE_AUTH_EAP)
        snprintf(why, len, "EAP credentials are checked per attempt");
    else if (c->ops.reauth_start(c->ops.arg, p, NULL, err, sizeof(err)) < 0)
        snprintf(why, len, "%s", err);
    else {
        profile_set_free(c->prev_set); /* the SA before the last switch is gone */
        c->prev_set = c->set;
        c->set = profile_set_ref(set);
        c->prof = p;
        c->switching = true;
        c->gw_index = 0;
        c->failures = 0;
        char what[160];
        snprintf(what, sizeof(what), "switching to profile %s (gateway %s:%u), make-before-break", p->name,
                 p->gateways[0].host, (unsigned)p->gateways[0].port);
        set_phase(c, CONN_REAUTHENTICATING, 0, what);
        return true;
    }
    return false;
}

void conn_set_profile(conn *c, profile_set *set, const profile *p)
{
    if (c->prof == p)
        return;
    char bbm[400] = "profile changed";
    if (c->prof && p && tunnel_up(c)) {
        char why[320];
        if (switch_make_before_break(c, set, p, why, sizeof(why)))
            return;
        snprintf(bbm, sizeof(bbm), "break-before-make: %s", why);
        LOG_INFO(c->log, "conn", "switching to profile %s, %s", p->name, bbm);
    }
    bool was_wanted = c->phase != CONN_IDLE && c->phase != CONN_ARMED && c->phase != CONN_CLOSING;
    /* Another TUN name: the old one's network goes. With the kill switch in
     * both, the new one is armed first and the old one removed after, so
     * that a prefix both protect is never without it. */
    const char *old_name = c->prof ? (c->prof->tunnel.tun_name ? c->prof->tunnel.tun_name : "m2m0") : "";
    bool other_tun = c->prof && (!p || strcmp(old_name, p->tunnel.tun_name ? p->tunnel.tun_name : "m2m0") != 0);
    bool arm_first = other_tun && p && p->tunnel.kill_switch && c->prof->tunnel.kill_switch;
    char old_tun[32] = "";
    if (arm_first)
        snprintf(old_tun, sizeof(old_tun), "%s", old_name);
    release_profile(c, other_tun && !arm_first);
    force_idle(c, "profile changed", false); /* reported by what follows */
    c->set = profile_set_ref(set);
    c->prof = p;
    if (c->refused_fp_set && p->auth == PROFILE_AUTH_EAP) {
        /* A reload of a profile whose password was refused: still refused
         * unless its password (or name, identity) changed. */
        uint8_t fp[32];
        c->eap_refused = profile_eap_fp(c, p, fp) && CRYPTO_memcmp(fp, c->refused_fp, sizeof(fp)) == 0;
        if (c->eap_refused)
            LOG_INFO(c->log, "conn", "profile %s: its EAP password was refused before and has not "
                     "changed: not sent again", p->name);
        else
            c->refused_fp_set = false;
    }
    const char *warn[4];
    size_t n_warn = profile_warnings(p, warn, 4);
    for (size_t i = 0; i < n_warn && i < 4; i++)
        LOG_WARN(c->log, "conn", "profile %s: %s", p->name, warn[i]);
    c->gw_index = 0;
    c->failures = 0;
    if (wants_network(c)) {
        char err[512];
        int r = arm_network(c, on_demand(c), err, sizeof(err));
        if (arm_first) {
            char rm_err[256];
            if (c->ops.net_remove(c->ops.arg, old_tun, rm_err, sizeof(rm_err)) < 0)
                LOG_WARN(c->log, "conn", "removing the network of TUN %s: %s", old_tun, rm_err);
            /* The old name's table may be the new one's too (hash):
             * refused while it held the old routes; now it is free. */
            if (r < 0)
                r = arm_network(c, on_demand(c), err, sizeof(err));
        }
        if (r < 0 && !was_wanted && p->mode != PROFILE_MODE_ALWAYS_ON) {
            if (c->hooks.on_state) /* in the status: last_error */
                c->hooks.on_state(c->hooks.arg, M2MVPN_STATE_IDLE, r, err);
            return;
        }
    }
    if (was_wanted || p->mode == PROFILE_MODE_ALWAYS_ON)
        start_attempt(c, was_wanted ? bbm : "always-on");
    else if (on_demand(c))
        set_phase(c, CONN_ARMED, 0, "on-demand: waiting for traffic");
    else if (c->hooks.on_state) /* IDLE, maybe unchanged: the status is refreshed */
        c->hooks.on_state(c->hooks.arg, M2MVPN_STATE_IDLE, 0, "profile changed");
}

void conn_kill_switch_status(conn *c, conn_kill_switch *out)
{
    memset(out, 0, sizeof(*out));
    if (!c->prof || !c->prof->tunnel.kill_switch)
        return;
    out->on = true;
    out->routing_only_allowed = c->prof->tunnel.kill_switch_routing_only;
    esp_kill_switch_info ks;
    memset(&ks, 0, sizeof(ks));
    if (!c->ops.kill_switch_info || !c->ops.kill_switch_info(c->ops.arg, &ks))
        return;
    out->routing = ks.routing;
    out->nftables = ks.nftables;
    if (!ks.nftables)
        snprintf(out->nft_why, sizeof(out->nft_why), "%s", ks.nft_why);
}

void conn_connect(conn *c)
{
    if (!c->prof)
        return;
    switch (c->phase) {
    case CONN_CLOSING:
        /* Connect after disconnect, before the Delete was confirmed: start
         * over once it is down. */
        c->closing.err = 0;
        c->closing.detail[0] = '\0';
        set_phase(c, CONN_RESTARTING, 0, "connect while disconnecting");
        return;
    case CONN_IDLE:
    case CONN_ARMED:
    case CONN_BACKOFF:
        c->failures = 0;
        c->recovering = false;
        start_attempt(c, "connect");
        return;
    default:
        return; /* already on its way */
    }
}

void conn_disconnect(conn *c)
{
    core_timer_cancel(c->loop, &c->retry_timer);
    switch (c->phase) {
    case CONN_NEGOTIATING:
    case CONN_UP:
    case CONN_ROAMING:
    case CONN_REAUTHENTICATING:
    case CONN_RESTARTING:
        c->closing.err = 0;
        c->closing.then = CONN_IDLE;
        c->closing.detail[0] = '\0';
        set_phase(c, CONN_CLOSING, 0, "disconnect");
        c->ops.sa_close(c->ops.arg); /* the down event follows */
        return;
    case CONN_WAIT_PIN:
    case CONN_WAIT_CREDENTIALS:
        release_sa(c);
        settle(c, true, 0, "disconnect");
        return;
    case CONN_CLOSING:
        return;
    default:
        settle(c, true, 0, "disconnect");
        return;
    }
}

void conn_enter_pin(conn *c, const char *pin, size_t len)
{
    if (c->phase != CONN_WAIT_PIN) {
        LOG_WARN(c->log, "conn", "a PIN was entered but none is needed now");
        return;
    }
    char err[256];
    int r = c->ops.cred_pin(c->ops.arg, pin, len, err, sizeof(err));
    if (r < 0) {
        /* Never retried: a smartcard or TPM would lock. */
        release_sa(c);
        settle(c, true, r, err);
        return;
    }
    set_phase(c, CONN_NEGOTIATING, 0, "PIN accepted");
    start_sa(c);
}

void conn_set_credentials(conn *c, const char *user, const char *pass, size_t len)
{
    char *u = user ? strdup(user) : NULL;
    char *pw = secure_memdup(pass, len);
    if ((user && !u) || !pw) {
        free(u);
        secure_free(pw, len);
        LOG_ERR(c->log, "conn", "out of memory storing the EAP credentials");
        return;
    }
    forget_session_credentials(c);
    c->session_user = u;
    c->session_pass = pw;
    c->session_pass_len = len;
    c->eap_refused = false;
    c->refused_fp_set = false;
    LOG_INFO(c->log, "conn", "EAP credentials set for '%s'",
             u ? u : (c->prof && c->prof->eap.identity ? c->prof->eap.identity : "(profile identity)"));
    if (c->phase != CONN_WAIT_CREDENTIALS)
        return; /* kept for the next attempt */
    c->failures = 0;
    c->recovering = false;
    start_attempt(c, "credentials given");
}

const char *conn_profile_name(const conn *c)
{
    return c->prof ? c->prof->name : NULL;
}

bool conn_up_with_set(const conn *c, const profile_set *set)
{
    return c->phase == CONN_UP && c->set == set && !c->switching;
}

void conn_remove_profile(conn *c)
{
    release_profile(c, true);
    force_idle(c, "profile removed", true);
}

void conn_get_status(conn *c, conn_status *st)
{
    memset(st, 0, sizeof(*st));
    snprintf(st->gateway, sizeof(st->gateway), "%s", c->sa_open || c->spi_in ? c->gw_text : "");
    snprintf(st->virtual_ip, sizeof(st->virtual_ip), "%s", c->vip);
    st->connected_since = c->connected_since;
    st->spi_in = c->spi_in;
    st->spi_out = c->spi_out;
    st->phase = c->phase;
    st->reconnects = c->reconnects;
    st->rekeys = c->rekeys;
    st->roams = c->roams;
    st->last_change = c->last_change;
    snprintf(st->last_reason, sizeof(st->last_reason), "%s", c->last_reason);
    c->ops.fill_status(c->ops.arg, c->spi_in != 0, st);
}

int conn_reauth_now(conn *c)
{
    if (!c || !c->ops.reauth_start)
        return M2MVPN_E_NOTSUPP;
    switch (c->phase) {
    case CONN_UP:
        c->reauth_wanted = true;
        core_timer_cancel(c->loop, &c->reauth_timer);
        core_timer_arm(c->loop, &c->reauth_timer, 0);
        return 0;
    case CONN_REAUTHENTICATING: /* may have read the old credential: once more after it */
    case CONN_ROAMING:
        c->reauth_wanted = true;
        return 0;
    default: /* no tunnel: the next IKE SA reads the credential anew */
        return M2MVPN_E_STATE;
    }
}
