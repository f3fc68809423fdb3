/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The connection state machine (lib/conn/conn.h) over fake conn_ops: no
 * TUN, no sockets, no IKE. The fake records what conn asked for, answers as
 * each case scripts it, and the IKE results are what lib/ike would report
 * (conn_ike_established, conn_post_ike_down). A mocked clock drives the
 * core_loop's timers (back-off, events, idle check).
 *
 * Tables: the transition table (every pair of phases, written here as the
 * specification), the back-off schedule and its jitter bounds, which errors
 * are retried in which mode, failover through the gateway list. Then the
 * PIN and EAP credential waits, rekeys (no move of the machine) and
 * on-demand.
 */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <net/if.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <m2mvpn/m2mvpn.h>

#include "conn/conn.h"
#include "conn/netwatch.h"
#include "core/log.h"
#include "core/loop.h"
#include "profile/profile.h"

static uint64_t fake_now;
static uint64_t fake_clock(void)
{
    return fake_now;
}

#define MAX_REC 64

typedef struct fake {
    /* scripted answers */
    int cred_err, path_err, sa_err, install_err, pin_err, rekey_err, roam_err, reauth_err, reauth_install_err;
    bool pin_needed;
    bool close_posts_down;   /* sa_close reports down at once, as IKE may */
    uint32_t rnd;
    uint64_t traffic;
    /* what conn asked for */
    unsigned n_sa_start, n_sa_close, n_sa_release, n_net_release, n_install, n_child_remove, n_rekey, n_roam;
    char roam_reason[128];   /* what the last roam was told */
    unsigned n_reauth_start, n_reauth_install, n_reauth_abort;
    char eap_user[32], eap_pass[32]; /* what the last sa_start was given */
    bool eap_given;
    int net_arm_hold;        /* -1: never armed */
    size_t gw_index[MAX_REC];
    size_t n_path;
    char net_ops[256];       /* "arm release(keep) remove(m2m1) ..." */
} fake;

static void net_op(fake *f, const char *op)
{
    size_t u = strlen(f->net_ops);
    snprintf(f->net_ops + u, sizeof(f->net_ops) - u, "%s%s", u ? " " : "", op);
}

typedef struct harness {
    core_loop loop;
    core_log log;
    profile_set *set;
    conn *c;
    fake f;
    m2mvpn_state states[MAX_REC];
    int state_err[MAX_REC];
    size_t n_states;
    m2mvpn_event_type events[MAX_REC];
    size_t n_events;
    char logbuf[16384];
    uint64_t delays[MAX_REC]; /* "reconnecting in N ms" */
    size_t n_delays;
} harness;

static harness *T;

/* ------------------------------------------------------------ fake ops */

static int f_net_arm(void *arg, const profile *p, bool hold, char *err, size_t len)
{
    (void)err, (void)len;
    ((fake *)arg)->net_arm_hold = hold;
    char op[48];
    snprintf(op, sizeof(op), "arm(%s)", p->tunnel.tun_name ? p->tunnel.tun_name : "m2m0");
    net_op(arg, op);
    return 0;
}

static void f_net_release(void *arg, bool remove)
{
    ((fake *)arg)->n_net_release++;
    net_op(arg, remove ? "release(remove)" : "release(keep)");
}

static int f_net_remove(void *arg, const char *tun_name, char *err, size_t err_len)
{
    (void)err, (void)err_len;
    char op[48];
    snprintf(op, sizeof(op), "remove(%s)", tun_name);
    net_op(arg, op);
    return 0;
}

static int f_path_open(void *arg, const profile *p, size_t gw_index, char *gw_text, size_t gw_text_len,
                       char *err, size_t err_len)
{
    fake *f = arg;
    if (f->n_path < MAX_REC)
        f->gw_index[f->n_path++] = gw_index;
    const profile_gateway *g = &p->gateways[gw_index % p->n_gateways];
    snprintf(gw_text, gw_text_len, "%s:%u", g->host, g->port);
    if (f->path_err)
        snprintf(err, err_len, "fake path error");
    return f->path_err;
}

static int f_cred_load(void *arg, const profile *p, bool *pin_needed, char *what, size_t what_len,
                       char *err, size_t err_len)
{
    fake *f = arg;
    (void)p;
    *pin_needed = f->pin_needed;
    snprintf(what, what_len, "fake token");
    if (f->cred_err)
        snprintf(err, err_len, "fake credential error");
    return f->cred_err;
}

static int f_cred_pin(void *arg, const char *pin, size_t len, char *err, size_t err_len)
{
    fake *f = arg;
    (void)pin, (void)len;
    if (f->pin_err)
        snprintf(err, err_len, "wrong PIN");
    return f->pin_err;
}

static void f_cred_release(void *arg)
{
    (void)arg;
}

static int f_sa_start(void *arg, const profile *p, const conn_eap *eap, char *err, size_t err_len)
{
    fake *f = arg;
    (void)p;
    f->n_sa_start++;
    f->eap_given = eap != NULL;
    snprintf(f->eap_user, sizeof(f->eap_user), "%s", eap && eap->user ? eap->user : "");
    snprintf(f->eap_pass, sizeof(f->eap_pass), "%.*s", eap && eap->pass ? (int)eap->pass_len : 0,
             eap && eap->pass ? eap->pass : "");
    if (f->sa_err)
        snprintf(err, err_len, "fake SA error");
    return f->sa_err;
}

static void f_sa_close(void *arg)
{
    fake *f = arg;
    f->n_sa_close++;
    if (f->close_posts_down)
        conn_post_ike_down(T->c, 0, IKE_FAULT_LOCAL, NULL);
}

static void f_sa_release(void *arg)
{
    ((fake *)arg)->n_sa_release++;
}

static int f_child_rekey(void *arg, uint32_t spi_in)
{
    fake *f = arg;
    (void)spi_in;
    f->n_rekey++;
    return f->rekey_err;
}

static int f_child_install(void *arg, const profile *p, const ike_child_result *r, char *err, size_t err_len)
{
    fake *f = arg;
    (void)p, (void)r;
    f->n_install++;
    if (f->install_err)
        snprintf(err, err_len, "fake install error");
    return f->install_err;
}

static int f_roam(void *arg, const char *reason)
{
    fake *f = arg;
    f->n_roam++;
    snprintf(f->roam_reason, sizeof(f->roam_reason), "%s", reason);
    return f->roam_err;
}

static int f_reauth_start(void *arg, const profile *p, const conn_eap *eap, char *err, size_t err_len)
{
    fake *f = arg;
    (void)p, (void)eap;
    f->n_reauth_start++;
    if (f->reauth_err)
        snprintf(err, err_len, "fake reauth error");
    return f->reauth_err;
}

static int f_reauth_install(void *arg, const profile *p, const ike_child_result *r, char *err, size_t err_len)
{
    fake *f = arg;
    (void)p, (void)r;
    f->n_reauth_install++;
    if (f->reauth_install_err)
        snprintf(err, err_len, "fake reauth install error");
    return f->reauth_install_err;
}

static void f_reauth_abort(void *arg)
{
    fake *f = arg;
    f->n_reauth_abort++;
}

static void f_child_remove(void *arg, uint32_t spi_in)
{
    (void)spi_in;
    ((fake *)arg)->n_child_remove++;
}

static void f_fill_status(void *arg, bool child, conn_status *st)
{
    (void)arg, (void)child, (void)st;
}

static uint64_t f_traffic(void *arg)
{
    return ((fake *)arg)->traffic;
}

static int64_t f_wall_time(void *arg)
{
    (void)arg;
    return (int64_t)(fake_now / 1000);
}

static uint32_t f_random(void *arg)
{
    return ((fake *)arg)->rnd;
}

/* ------------------------------------------------------------- harness */

static void on_state(void *arg, m2mvpn_state st, int err, const char *detail)
{
    harness *h = arg;
    (void)detail;
    if (h->n_states < MAX_REC) {
        h->state_err[h->n_states] = err;
        h->states[h->n_states++] = st;
    }
}

static void on_event(void *arg, m2mvpn_event_type type, int err, const char *detail)
{
    harness *h = arg;
    (void)err, (void)detail;
    if (h->n_events < MAX_REC)
        h->events[h->n_events++] = type;
}

static void on_log(m2mvpn *hd, int level, const char *sub, const char *msg, void *ud)
{
    harness *h = ud;
    (void)hd;
    size_t used = strlen(h->logbuf);
    snprintf(h->logbuf + used, sizeof(h->logbuf) - used, "[%d %s] %s\n", level, sub, msg);
    unsigned long long ms;
    if (sscanf(msg, "reconnecting in %llu ms", &ms) == 1 && h->n_delays < MAX_REC)
        h->delays[h->n_delays++] = ms;
    if (getenv("M2MVPN_TEST_LOG"))
        fprintf(stderr, "  [%d %s] %s\n", level, sub, msg);
}

/* The "auth" object of the profiles use_profile() makes (PSK unless a
 * test sets another). */
static const char *auth_json;
static unsigned reauth_s; /* ike.reauth_s of those profiles */
#define AUTH_PSK "{\"method\": \"psk\", \"psk\": \"unit test psk, 32 bytes or so..\"}"
#define AUTH_EAP_NO_PASSWORD "{\"method\": \"eap\", \"eap\": {\"type\": \"mschapv2\", \"identity\": \"dev1\"}}"
#define AUTH_EAP "{\"method\": \"eap\", \"eap\": {\"type\": \"mschapv2\", \"identity\": \"dev1\"," \
                 " \"password\": \"profile-pw\"}}"

static char *profile_json(const char *mode, int n_gw, unsigned idle_s)
{
    static char buf[1024];
    char gws[256] = "";
    for (int i = 0; i < n_gw; i++) {
        size_t u = strlen(gws);
        snprintf(gws + u, sizeof(gws) - u, "%s{\"host\": \"198.51.100.%d\"}", i ? ", " : "", i + 1);
    }
    snprintf(buf, sizeof(buf),
             "{\"version\": 1, \"name\": \"unit\", \"mode\": \"%s\", \"gateways\": [%s],"
             " \"local_id\": \"dev1.m2m.test\", \"remote_id\": \"gw.m2m.test\","
             " \"auth\": %s, \"ike\": {\"reauth_s\": %u},"
             " \"tunnel\": {\"remote_ts\": [\"198.18.0.0/16\"], \"on_demand_idle_s\": %u}}",
             mode, gws, auth_json, reauth_s, idle_s);
    return buf;
}

static void setup(void)
{
    T = calloc(1, sizeof(*T));
    ck_assert_ptr_nonnull(T);
    fake_now = 1000000;
    ck_assert_int_eq(core_loop_init(&T->loop, NULL, NULL), 0);
    T->loop.clock_ms = fake_clock;
    core_log_init(&T->log, NULL);
    core_log_set(&T->log, on_log, M2MVPN_LOG_DEBUG, T);
    T->f.close_posts_down = true;
    T->f.net_arm_hold = -1;
    T->f.rnd = 0x12345;
    auth_json = AUTH_PSK;
    reauth_s = 0;
    conn_ops ops = {
        .arg = &T->f, .net_arm = f_net_arm, .net_release = f_net_release, .net_remove = f_net_remove,
        .path_open = f_path_open,
        .cred_load = f_cred_load, .cred_pin = f_cred_pin, .cred_release = f_cred_release,
        .sa_start = f_sa_start, .sa_close = f_sa_close, .sa_release = f_sa_release,
        .child_rekey = f_child_rekey, .child_install = f_child_install, .child_remove = f_child_remove, .fill_status = f_fill_status,
        .roam = f_roam,
        .traffic = f_traffic, .wall_time = f_wall_time, .random = f_random,
        .reauth_start = f_reauth_start, .reauth_install = f_reauth_install, .reauth_abort = f_reauth_abort,
    };
    conn_hooks hooks = { T, on_state, on_event };
    ck_assert_int_eq(conn_new_with_ops(&T->loop, &T->log, &hooks, &ops, &T->c), 0);
}

static void teardown(void)
{
    conn_free(T->c);
    profile_set_free(T->set);
    core_log_destroy(&T->log);
    core_loop_destroy(&T->loop);
    free(T);
    T = NULL;
}

static void use_profile(const char *mode, int n_gw, unsigned idle_s)
{
    char err[256];
    const char *json = profile_json(mode, n_gw, idle_s);
    ck_assert_msg(profile_set_parse(json, strlen(json), NULL, &T->set, err, sizeof(err)) == 0, "%s", err);
    conn_set_profile(T->c, T->set, &T->set->items[0]);
}

/* Let `ms` pass and run what is due (posted events included). */
static void advance(uint64_t ms)
{
    fake_now += ms;
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(core_loop_run_once(&T->loop, 0), 0);
}

static void established(void)
{
    static const uint8_t keymat[64];
    ike_child_result r = { .spi_in = 0x11111111, .spi_out = 0x22222222, .keymat = keymat,
                           .keymat_len = sizeof(keymat), .has_vip = true, .vip = { 198, 18, 1, 1 } };
    conn_ike_established(T->c, &r);
}

static void down(int err, ike_fault fault)
{
    conn_post_ike_down(T->c, err, fault, "fake down");
    advance(0);
}

static conn_phase phase(void)
{
    return conn_get_phase(T->c);
}

static m2mvpn_state last_state(void)
{
    ck_assert_uint_gt(T->n_states, 0);
    return T->states[T->n_states - 1];
}

/* --------------------------------------------------------- reach a phase */

/* Drive the machine into `p` the way the API and IKE would. */
static void reach(conn_phase p)
{
    switch (p) {
    case CONN_IDLE:
        use_profile("manual", 1, 0);
        break;
    case CONN_ARMED:
        use_profile("on-demand", 1, 60);
        break;
    case CONN_WAIT_PIN:
        T->f.pin_needed = true;
        use_profile("manual", 1, 0);
        conn_connect(T->c);
        break;
    case CONN_WAIT_CREDENTIALS:
        auth_json = AUTH_EAP_NO_PASSWORD;
        use_profile("manual", 1, 0);
        conn_connect(T->c);
        break;
    case CONN_NEGOTIATING:
        use_profile("manual", 1, 0);
        conn_connect(T->c);
        break;
    case CONN_UP:
        reach(CONN_NEGOTIATING);
        established();
        break;
    case CONN_REAUTHENTICATING:
        /* reauth_s 100: due at 80..90 s (fake random 0x12345: 85.442 s) */
        reauth_s = 100;
        reach(CONN_UP);
        advance(85442);
        break;
    case CONN_RESTARTING:
        T->f.close_posts_down = false;
        T->f.rekey_err = M2MVPN_E_STATE; /* no rekey possible: renewed */
        reach(CONN_UP);
        conn_post_rekey(T->c, 0x11111111, ESP_REKEY_HARD_TIME);
        advance(0);
        break;
    case CONN_CLOSING:
        T->f.close_posts_down = false;
        reach(CONN_UP);
        conn_disconnect(T->c);
        break;
    case CONN_ROAMING:
        reach(CONN_UP);
        conn_post_path_changed(T->c, "path moved");
        advance(0);
        break;
    case CONN_BACKOFF:
        use_profile("always-on", 1, 0);
        down(M2MVPN_E_TIMEOUT, IKE_FAULT_PEER);
        break;
    default:
        ck_abort();
    }
    ck_assert_msg(phase() == p, "wanted %s, got %s", conn_phase_name(p), conn_phase_name(phase()));
}

/* ------------------------------------------------------------ the table */

#define B(p) (1u << CONN_##p)
/* The specification: which moves the machine may make. */
static const unsigned spec[CONN_PHASE__COUNT] = {
    [CONN_IDLE] = B(ARMED) | B(NEGOTIATING),
    [CONN_ARMED] = B(IDLE) | B(NEGOTIATING),
    [CONN_WAIT_PIN] = B(IDLE) | B(NEGOTIATING),
    [CONN_WAIT_CREDENTIALS] = B(IDLE) | B(NEGOTIATING),
    [CONN_NEGOTIATING] = B(IDLE) | B(ARMED) | B(WAIT_PIN) | B(WAIT_CREDENTIALS) | B(UP) | B(RESTARTING) |
                         B(CLOSING) | B(BACKOFF),
    [CONN_UP] = B(IDLE) | B(ARMED) | B(RESTARTING) | B(CLOSING) | B(BACKOFF) | B(WAIT_CREDENTIALS) |
                B(ROAMING) | B(REAUTHENTICATING),
    [CONN_ROAMING] = B(UP) | B(IDLE) | B(ARMED) | B(RESTARTING) | B(CLOSING) | B(BACKOFF),
    [CONN_REAUTHENTICATING] = B(UP) | B(IDLE) | B(ARMED) | B(RESTARTING) | B(CLOSING) | B(BACKOFF) |
                              B(WAIT_CREDENTIALS) | B(ROAMING),
    [CONN_RESTARTING] = B(IDLE) | B(ARMED) | B(NEGOTIATING) | B(CLOSING) | B(BACKOFF),
    [CONN_CLOSING] = B(IDLE) | B(ARMED) | B(RESTARTING),
    [CONN_BACKOFF] = B(IDLE) | B(NEGOTIATING),
};
#undef B

START_TEST(phase_names_distinct)
{
    for (int i = 0; i < CONN_PHASE__COUNT; i++) {
        ck_assert_str_ne(conn_phase_name((conn_phase)i), "?");
        for (int j = 0; j < i; j++)
            ck_assert_str_ne(conn_phase_name((conn_phase)i), conn_phase_name((conn_phase)j));
    }
    ck_assert_str_eq(conn_phase_name(CONN_PHASE__COUNT), "?");
}
END_TEST

/* Every (from, to): allowed moves happen, the others are refused, logged,
 * and leave phase and public state as they were. _i is from * N + to. */
START_TEST(every_transition)
{
    conn_phase from = (conn_phase)(_i / CONN_PHASE__COUNT), to = (conn_phase)(_i % CONN_PHASE__COUNT);
    if (from == to)
        return;
    reach(from);
    size_t n_states = T->n_states;
    T->logbuf[0] = '\0';
    int r = conn_try_phase(T->c, to, "unit test");
    if (spec[from] & (1u << to)) {
        ck_assert_int_eq(r, 0);
        ck_assert_int_eq(phase(), to);
        char want[96];
        snprintf(want, sizeof(want), "%s -> %s (unit test)", conn_phase_name(from), conn_phase_name(to));
        ck_assert_msg(strstr(T->logbuf, want), "log: %s", T->logbuf);
        ck_assert_uint_eq(T->n_states, n_states + 1);
    } else {
        ck_assert_int_eq(r, M2MVPN_E_STATE);
        ck_assert_int_eq(phase(), from);
        ck_assert_uint_eq(T->n_states, n_states);
        ck_assert_msg(strstr(T->logbuf, "refused move"), "log: %s", T->logbuf);
    }
}
END_TEST

/* The public state each phase shows. */
START_TEST(public_state_per_phase)
{
    static const struct { conn_phase p; m2mvpn_state st; } cases[] = {
        { CONN_ARMED, M2MVPN_STATE_IDLE },           { CONN_WAIT_PIN, M2MVPN_STATE_CONNECTING },
        { CONN_NEGOTIATING, M2MVPN_STATE_CONNECTING }, { CONN_UP, M2MVPN_STATE_CONNECTED },
        { CONN_RESTARTING, M2MVPN_STATE_RECONNECTING }, { CONN_CLOSING, M2MVPN_STATE_DISCONNECTING },
        { CONN_BACKOFF, M2MVPN_STATE_RECONNECTING }, { CONN_WAIT_CREDENTIALS, M2MVPN_STATE_CONNECTING },
        { CONN_ROAMING, M2MVPN_STATE_CONNECTED },
        { CONN_REAUTHENTICATING, M2MVPN_STATE_CONNECTED },
    };
    reach(cases[_i].p);
    ck_assert_int_eq(last_state(), cases[_i].st);
}
END_TEST

/* ------------------------------------------------------ reauthentication */

/* The new IKE SA up, with the virtual IP 198.18.1.<vip_last>. */
static void reauthenticated_vip(uint32_t spi_in, uint8_t vip_last)
{
    static const uint8_t keymat[64];
    ike_child_result r = { .spi_in = spi_in, .spi_out = spi_in + 1, .keymat = keymat,
                           .keymat_len = sizeof(keymat), .has_vip = true, .vip = { 198, 18, 1, vip_last } };
    conn_reauth_established(T->c, &r);
}

static void reauthenticated(uint32_t spi_in)
{
    reauthenticated_vip(spi_in, 1);
}

/* ike.reauth_s: up -> reauthenticating at 80..90 % of it, a new IKE SA next
 * to the old one (nothing closed, nothing removed), -> up once it carries
 * the tunnel; the next one is due reauth_s later again. */
START_TEST(reauth_make_before_break)
{
    reauth_s = 100;
    reach(CONN_UP);
    size_t n_states = T->n_states;
    advance(85441);
    ck_assert_int_eq(phase(), CONN_UP);
    ck_assert_uint_eq(T->f.n_reauth_start, 0);
    advance(1);
    ck_assert_int_eq(phase(), CONN_REAUTHENTICATING);
    ck_assert_uint_eq(T->f.n_reauth_start, 1);
    ck_assert_int_eq(last_state(), M2MVPN_STATE_CONNECTED);
    ck_assert_ptr_nonnull(strstr(T->logbuf, "up -> reauthenticating (reauthentication due)"));
    reauthenticated(0x55555555);
    ck_assert_int_eq(phase(), CONN_UP);
    ck_assert_uint_eq(T->f.n_reauth_install, 1);
    ck_assert_ptr_nonnull(strstr(T->logbuf, "reauthenticating -> up (reauthenticated)"));
    /* Make-before-break: the tunnel never left CONNECTED, nothing closed. */
    for (size_t i = n_states; i < T->n_states; i++)
        ck_assert_int_eq(T->states[i], M2MVPN_STATE_CONNECTED);
    ck_assert_uint_eq(T->f.n_sa_close, 0);
    ck_assert_uint_eq(T->f.n_sa_release, 0);
    ck_assert_uint_eq(T->f.n_child_remove, 0);
    ck_assert_int_eq(T->events[T->n_events - 1], M2MVPN_EVENT_REKEYED);
    conn_status st;
    conn_get_status(T->c, &st);
    ck_assert_uint_eq(st.spi_in, 0x55555555);
    ck_assert_uint_eq(st.rekeys, 1);
    ck_assert_uint_eq(st.reconnects, 0);
    /* The new SA's own schedule. */
    advance(85441);
    ck_assert_int_eq(phase(), CONN_UP);
    advance(1);
    ck_assert_int_eq(phase(), CONN_REAUTHENTICATING);
    ck_assert_uint_eq(T->f.n_reauth_start, 2);
    /* A CHILD SA rekey of the SA that still carries the tunnel goes on. */
    conn_post_rekey(T->c, 0x55555555, ESP_REKEY_SOFT_BYTES);
    advance(0);
    ck_assert_uint_eq(T->f.n_rekey, 1);
}
END_TEST

/* A failed reauthentication leaves the old IKE SA carrying the tunnel and
 * is tried again after a tenth of reauth_s; the old SA's loss during one
 * is handled as when up; a disconnect closes. */
START_TEST(reauth_failures)
{
    reach(CONN_REAUTHENTICATING);
    conn_post_reauth_failed(T->c, M2MVPN_E_AUTH_PEER, IKE_FAULT_PEER, "gateway refused");
    advance(0);
    ck_assert_int_eq(phase(), CONN_UP);
    ck_assert_int_eq(T->events[T->n_events - 1], M2MVPN_EVENT_AUTH_FAILED);
    ck_assert_uint_eq(T->f.n_sa_close, 0);
    advance(9999);
    ck_assert_int_eq(phase(), CONN_UP);
    advance(1);
    ck_assert_int_eq(phase(), CONN_REAUTHENTICATING);
    /* Installing the new one fails: the old one carries on. */
    T->f.reauth_install_err = M2MVPN_E_TUN;
    reauthenticated(0x55555555);
    ck_assert_int_eq(phase(), CONN_UP);
    conn_status st;
    conn_get_status(T->c, &st);
    ck_assert_uint_eq(st.spi_in, 0x11111111);
    ck_assert_uint_eq(st.rekeys, 0);
    /* It cannot start: up again, retried. */
    T->f.reauth_err = M2MVPN_E_STATE;
    advance(10000);
    ck_assert_int_eq(phase(), CONN_UP);
    ck_assert_uint_eq(T->f.n_reauth_start, 3);
    /* The old SA lost while reauthenticating (manual: stays down). */
    T->f.reauth_err = 0;
    advance(10000);
    ck_assert_int_eq(phase(), CONN_REAUTHENTICATING);
    down(M2MVPN_E_TIMEOUT, IKE_FAULT_PEER);
    ck_assert_int_eq(phase(), CONN_IDLE);
    ck_assert_uint_eq(T->f.n_sa_release, 1);
    /* A late result of the dropped reauthentication is not used. */
    reauthenticated(0x77777777);
    ck_assert_uint_eq(T->f.n_reauth_install, 1);
}
END_TEST

START_TEST(reauth_disconnect_and_off)
{
    reach(CONN_REAUTHENTICATING);
    conn_disconnect(T->c);
    ck_assert_int_eq(phase(), CONN_CLOSING);
    advance(0); /* the fake's close posts the down at once */
    ck_assert_int_eq(phase(), CONN_IDLE);
    ck_assert_uint_eq(T->f.n_sa_close, 1);
    /* reauth_s 0: never. */
    teardown();
    setup();
    reach(CONN_UP);
    advance(7 * 24 * 3600 * 1000ull);
    ck_assert_int_eq(phase(), CONN_UP);
    ck_assert_uint_eq(T->f.n_reauth_start, 0);
}
END_TEST

/* ------------------------------------------------------------ back-off */

START_TEST(backoff_schedule)
{
    static const struct { unsigned n; bool auth; uint64_t base; } cases[] = {
        { 0, false, 1000 },   { 1, false, 2000 },   { 2, false, 4000 },    { 3, false, 8000 },
        { 5, false, 32000 },  { 6, false, 60000 },  { 40, false, 60000 },  { 0, true, 10000 },
        { 1, true, 20000 },   { 4, true, 160000 },  { 7, true, 900000 },   { 60, true, 900000 },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint64_t lo = cases[i].base * (100 - CONN_JITTER_PCT) / 100;
        uint64_t hi = cases[i].base * (100 + CONN_JITTER_PCT) / 100;
        ck_assert_uint_eq(conn_backoff_ms(cases[i].n, cases[i].auth, 0), lo);
        uint64_t seen_lo = UINT64_MAX, seen_hi = 0;
        for (uint32_t r = 0; r < 200000; r += 7) {
            uint64_t d = conn_backoff_ms(cases[i].n, cases[i].auth, r * 2654435761u);
            ck_assert_uint_ge(d, lo);
            ck_assert_uint_le(d, hi);
            seen_lo = d < seen_lo ? d : seen_lo;
            seen_hi = d > seen_hi ? d : seen_hi;
        }
        /* The jitter spreads: both ends of the band are nearly reached. */
        ck_assert_uint_lt(seen_lo, lo + (hi - lo) / 20);
        ck_assert_uint_gt(seen_hi, hi - (hi - lo) / 20);
    }
}
END_TEST

/* Always-on against a silent gateway: the attempts wait as scheduled (not
 * a millisecond less), doubling; a connection resets the schedule. */
START_TEST(backoff_in_the_machine)
{
    T->f.rnd = 0; /* the lower end of the jitter band */
    use_profile("always-on", 1, 0);
    ck_assert_uint_eq(T->f.n_sa_start, 1);
    for (unsigned i = 0; i < 4; i++) {
        down(M2MVPN_E_TIMEOUT, IKE_FAULT_PEER);
        ck_assert_int_eq(phase(), CONN_BACKOFF);
        ck_assert_int_eq(last_state(), M2MVPN_STATE_RECONNECTING);
        ck_assert_uint_eq(T->n_delays, i + 1);
        uint64_t want = conn_backoff_ms(i, false, 0);
        ck_assert_uint_eq(T->delays[i], want);
        advance(want - 1);
        ck_assert_uint_eq(T->f.n_sa_start, i + 1);
        advance(1);
        ck_assert_uint_eq(T->f.n_sa_start, i + 2);
        ck_assert_int_eq(phase(), CONN_NEGOTIATING);
        ck_assert_int_eq(last_state(), M2MVPN_STATE_RECONNECTING);
    }
    established();
    ck_assert_int_eq(last_state(), M2MVPN_STATE_CONNECTED);
    down(M2MVPN_E_TIMEOUT, IKE_FAULT_PEER); /* DPD: the gateway is gone */
    ck_assert_uint_eq(T->delays[4], conn_backoff_ms(0, false, 0));
}
END_TEST

/* ----------------------------------------------------- which are retried */

typedef struct retry_case {
    const char *mode;
    int err;
    ike_fault fault;
    conn_phase then;
    bool auth_event;
} retry_case;

static const retry_case retry_cases[] = {
    /* always-on: whatever the gateway did is retried, also "local" codes */
    { "always-on", M2MVPN_E_TIMEOUT, IKE_FAULT_PEER, CONN_BACKOFF, false },
    { "always-on", M2MVPN_E_PROTOCOL, IKE_FAULT_PEER, CONN_BACKOFF, false },
    { "always-on", M2MVPN_E_INVAL, IKE_FAULT_PEER, CONN_BACKOFF, false },
    { "always-on", M2MVPN_E_CERT, IKE_FAULT_PEER, CONN_BACKOFF, false },
    { "always-on", M2MVPN_E_AUTH_PEER, IKE_FAULT_PEER, CONN_BACKOFF, true },
    { "always-on", M2MVPN_E_AUTH_LOCAL, IKE_FAULT_PEER, CONN_BACKOFF, true },
    { "always-on", M2MVPN_E_NETWORK, IKE_FAULT_LOCAL, CONN_BACKOFF, false },
    { "always-on", M2MVPN_E_TIMEOUT, IKE_FAULT_LOCAL, CONN_BACKOFF, false },
    /* ... not our own causes a retry cannot fix */
    { "always-on", M2MVPN_E_PIN, IKE_FAULT_LOCAL, CONN_IDLE, false },
    { "always-on", M2MVPN_E_CERT, IKE_FAULT_LOCAL, CONN_IDLE, false },
    { "always-on", M2MVPN_E_NOTSUPP, IKE_FAULT_LOCAL, CONN_IDLE, false },
    { "always-on", M2MVPN_E_PROFILE, IKE_FAULT_LOCAL, CONN_IDLE, false },
    { "always-on", M2MVPN_E_INVAL, IKE_FAULT_LOCAL, CONN_IDLE, false },
    { "always-on", M2MVPN_E_CREDENTIALS, IKE_FAULT_LOCAL, CONN_IDLE, false },
    /* manual: down after any failure */
    { "manual", M2MVPN_E_TIMEOUT, IKE_FAULT_PEER, CONN_IDLE, false },
    { "manual", M2MVPN_E_AUTH_PEER, IKE_FAULT_PEER, CONN_IDLE, true },
    /* on-demand: armed again (traffic tries anew), unless it cannot help */
    { "on-demand", M2MVPN_E_TIMEOUT, IKE_FAULT_PEER, CONN_ARMED, false },
    { "on-demand", M2MVPN_E_AUTH_LOCAL, IKE_FAULT_PEER, CONN_ARMED, true },
    { "on-demand", M2MVPN_E_PIN, IKE_FAULT_LOCAL, CONN_IDLE, false },
};

START_TEST(which_errors_are_retried)
{
    const retry_case *rc = &retry_cases[_i];
    use_profile(rc->mode, 2, 60);
    conn_connect(T->c);
    ck_assert_int_eq(phase(), CONN_NEGOTIATING);
    unsigned started = T->f.n_sa_start;
    down(rc->err, rc->fault);
    ck_assert_msg(phase() == rc->then, "%s %s/%s: %s", rc->mode, m2mvpn_error_name(rc->err),
                  ike_fault_name(rc->fault), conn_phase_name(phase()));
    ck_assert_int_eq(T->state_err[T->n_states - 1], rc->err);
    bool auth_event = false;
    for (size_t i = 0; i < T->n_events; i++)
        auth_event |= T->events[i] == M2MVPN_EVENT_AUTH_FAILED;
    ck_assert_int_eq(auth_event, rc->auth_event);
    bool auth = rc->err == M2MVPN_E_AUTH_LOCAL || rc->err == M2MVPN_E_AUTH_PEER;
    if (rc->then == CONN_BACKOFF) /* the auth schedule is the longer one */
        ck_assert_uint_eq(T->delays[0], conn_backoff_ms(0, auth, T->f.rnd));
    /* An hour later: retried only in back-off. */
    advance(3600 * 1000);
    ck_assert_uint_eq(T->f.n_sa_start, started + (rc->then == CONN_BACKOFF));
}
END_TEST

/* Timeouts and unreachable gateways move on to the next gateway (and past
 * the last back to the first); other failures try the same one again. */
START_TEST(failover)
{
    static const struct { int err; size_t next; } steps[] = {
        { M2MVPN_E_TIMEOUT, 1 },   { M2MVPN_E_NETWORK, 2 },  { M2MVPN_E_AUTH_PEER, 2 },
        { M2MVPN_E_PROTOCOL, 2 },  { M2MVPN_E_TIMEOUT, 0 },  { M2MVPN_E_TIMEOUT, 1 },
    };
    use_profile("always-on", 3, 0);
    ck_assert_uint_eq(T->f.gw_index[0], 0);
    for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
        down(steps[i].err, IKE_FAULT_PEER);
        advance(CONN_BACKOFF_AUTH_MAX_MS * 2);
        ck_assert_uint_eq(T->f.n_path, i + 2);
        ck_assert_msg(T->f.gw_index[i + 1] == steps[i].next, "step %zu: gateway %zu", i, T->f.gw_index[i + 1]);
    }
}
END_TEST

/* --------------------------------------------------------------- PIN */

START_TEST(pin_wrong_is_never_retried)
{
    T->f.pin_needed = true;
    use_profile("always-on", 1, 0);
    ck_assert_int_eq(phase(), CONN_WAIT_PIN);
    ck_assert_int_eq(last_state(), M2MVPN_STATE_CONNECTING);
    ck_assert_uint_eq(T->n_events, 1);
    ck_assert_int_eq(T->events[0], M2MVPN_EVENT_PIN_REQUIRED);
    ck_assert_uint_eq(T->f.n_sa_start, 0);
    T->f.pin_err = M2MVPN_E_PIN;
    conn_enter_pin(T->c, "0000", 4);
    ck_assert_int_eq(phase(), CONN_IDLE);
    ck_assert_int_eq(T->state_err[T->n_states - 1], M2MVPN_E_PIN);
    advance(3600 * 1000);
    ck_assert_uint_eq(T->f.n_sa_start, 0);
}
END_TEST

START_TEST(pin_right_goes_on)
{
    T->f.pin_needed = true;
    use_profile("manual", 1, 0);
    conn_enter_pin(T->c, "1234", 4); /* not asked for: ignored */
    ck_assert_int_eq(phase(), CONN_IDLE);
    conn_connect(T->c);
    ck_assert_int_eq(phase(), CONN_WAIT_PIN);
    conn_enter_pin(T->c, "1234", 4);
    ck_assert_int_eq(phase(), CONN_NEGOTIATING);
    ck_assert_uint_eq(T->f.n_sa_start, 1);
    established();
    ck_assert_int_eq(phase(), CONN_UP);
}
END_TEST

START_TEST(disconnect_while_waiting_for_the_pin)
{
    T->f.pin_needed = true;
    use_profile("manual", 1, 0);
    conn_connect(T->c);
    conn_disconnect(T->c);
    ck_assert_int_eq(phase(), CONN_IDLE);
    conn_enter_pin(T->c, "1234", 4);
    ck_assert_int_eq(phase(), CONN_IDLE);
    ck_assert_uint_eq(T->f.n_sa_start, 0);
}
END_TEST

/* ------------------------------------------------- connect / disconnect */

START_TEST(connect_during_disconnect)
{
    reach(CONN_CLOSING);
    ck_assert_int_eq(last_state(), M2MVPN_STATE_DISCONNECTING);
    conn_connect(T->c);
    ck_assert_int_eq(phase(), CONN_RESTARTING);
    ck_assert_uint_eq(T->f.n_sa_start, 1);
    down(0, IKE_FAULT_LOCAL); /* the Delete is answered */
    ck_assert_int_eq(phase(), CONN_NEGOTIATING);
    ck_assert_uint_eq(T->f.n_sa_start, 2);
    ck_assert_uint_eq(T->f.n_sa_release, 1);
    established();
    ck_assert_int_eq(last_state(), M2MVPN_STATE_CONNECTED);
}
END_TEST

START_TEST(disconnect_stays_down)
{
    reach(CONN_UP);
    conn_disconnect(T->c);
    ck_assert_int_eq(phase(), CONN_CLOSING);
    ck_assert_int_eq(last_state(), M2MVPN_STATE_DISCONNECTING);
    advance(0); /* the fake's Delete is answered at once */
    ck_assert_int_eq(phase(), CONN_IDLE);
    ck_assert_int_eq(last_state(), M2MVPN_STATE_IDLE);
    ck_assert_uint_eq(T->f.n_child_remove, 1);
    advance(3600 * 1000);
    ck_assert_uint_eq(T->f.n_sa_start, 1);
}
END_TEST

/* The IKE SA's down report runs from the loop, not inside its callback. */
START_TEST(down_is_posted)
{
    reach(CONN_UP);
    conn_post_ike_down(T->c, M2MVPN_E_TIMEOUT, IKE_FAULT_PEER, "no answer");
    ck_assert_int_eq(phase(), CONN_UP);
    ck_assert_uint_eq(T->f.n_sa_release, 0);
    advance(0);
    ck_assert_int_eq(phase(), CONN_IDLE);
    ck_assert_uint_eq(T->f.n_sa_release, 1);
}
END_TEST

/* A CHILD SA install that fails closes the SA and reports the install's
 * error, not the Delete's. */
START_TEST(install_failure)
{
    T->f.install_err = M2MVPN_E_TUN;
    reach(CONN_NEGOTIATING);
    established();
    ck_assert_uint_eq(T->f.n_sa_close, 1);
    advance(0);
    ck_assert_int_eq(phase(), CONN_IDLE);
    ck_assert_int_eq(T->state_err[T->n_states - 1], M2MVPN_E_TUN);
}
END_TEST

/* Every lifetime kind of every SA raises its own request: one event per SA
 * is kept, none is lost for another SA, and the queue does not overflow. */
START_TEST(rekey_requests_coalesced)
{
    reach(CONN_UP);
    T->logbuf[0] = '\0';
    for (int r = 0; r < ESP_REKEY__COUNT; r++)
        for (uint32_t spi = 0x11111110; spi < 0x11111114; spi++)
            conn_post_rekey(T->c, spi, (esp_rekey_reason)r);
    for (int i = 0; i < 40; i++)
        conn_post_traffic(T->c);
    advance(0);
    ck_assert_msg(!strstr(T->logbuf, "queue full"), "%s", T->logbuf);
    ck_assert_int_eq(phase(), CONN_UP);
    ck_assert_uint_eq(T->f.n_rekey, 1); /* 0x11111111 was ours: one rekey */
    ck_assert_uint_eq(T->f.n_sa_close, 0);
    ck_assert_uint_eq(T->f.n_sa_start, 1);
}
END_TEST

static size_t count_events(m2mvpn_event_type type)
{
    size_t n = 0;
    for (size_t i = 0; i < T->n_events; i++)
        n += T->events[i] == type;
    return n;
}

/* A rekey is no move of the machine: the tunnel stays UP, nothing is
 * reported as a state, the new SPIs show in the status, REKEYED is
 * raised and counted (CHILD and IKE SA). */
START_TEST(rekey_is_no_move)
{
    reach(CONN_UP);
    size_t n_states = T->n_states;
    conn_post_rekey(T->c, 0x99999999, ESP_REKEY_SOFT_TIME); /* not ours: ignored */
    advance(0);
    ck_assert_uint_eq(T->f.n_rekey, 0);
    conn_post_rekey(T->c, 0x11111111, ESP_REKEY_SOFT_TIME);
    advance(0);
    ck_assert_uint_eq(T->f.n_rekey, 1);
    ck_assert_int_eq(phase(), CONN_UP);
    conn_child_rekeyed(T->c, 0x11111111, 0x33333333, 0x44444444, 0, NULL);
    conn_ike_rekeyed(T->c);
    ck_assert_int_eq(phase(), CONN_UP);
    ck_assert_uint_eq(T->n_states, n_states);
    ck_assert_uint_eq(count_events(M2MVPN_EVENT_REKEYED), 2);
    conn_status st;
    conn_get_status(T->c, &st);
    ck_assert_uint_eq(st.rekeys, 2);
    ck_assert_uint_eq(st.reconnects, 0);
    ck_assert_uint_eq(st.spi_in, 0x33333333);
    ck_assert_uint_eq(st.spi_out, 0x44444444);
    ck_assert_uint_eq(T->f.n_sa_close, 0);
    ck_assert_uint_eq(T->f.n_sa_start, 1);
    /* A request for the old SA now is not ours any more. */
    conn_post_rekey(T->c, 0x11111111, ESP_REKEY_HARD_TIME);
    advance(0);
    ck_assert_uint_eq(T->f.n_rekey, 1);
    ck_assert_int_eq(phase(), CONN_UP);
}
END_TEST

/* No rekey possible (say the IKE SA is not established): at the soft
 * limit the SA goes on as it is; at the hard limit the tunnel is renewed
 * at once (no back-off), RECONNECTING. */
START_TEST(rekey_impossible_renews_at_hard_limit)
{
    T->f.rekey_err = M2MVPN_E_STATE;
    reach(CONN_UP);
    conn_post_rekey(T->c, 0x11111111, ESP_REKEY_SOFT_TIME);
    advance(0);
    ck_assert_int_eq(phase(), CONN_UP);
    ck_assert_uint_eq(T->f.n_sa_close, 0);
    conn_post_rekey(T->c, 0x11111111, ESP_REKEY_HARD_SEQ);
    advance(0);
    ck_assert_uint_eq(T->f.n_rekey, 2);
    ck_assert_int_eq(phase(), CONN_NEGOTIATING);
    ck_assert_int_eq(last_state(), M2MVPN_STATE_RECONNECTING);
    ck_assert_uint_eq(T->f.n_sa_start, 2);
    established();
    conn_status st;
    conn_get_status(T->c, &st);
    ck_assert_uint_eq(st.reconnects, 1);
    ck_assert_uint_eq(st.rekeys, 0);
}
END_TEST

/* The rekeyed CHILD SA cannot be installed: the tunnel starts over and the
 * status shows the install's error. */
START_TEST(rekey_install_failure)
{
    reach(CONN_UP);
    conn_child_rekeyed(T->c, 0x11111111, 0x33333333, 0x44444444, M2MVPN_E_TUN, "fake install error");
    ck_assert_uint_eq(T->f.n_sa_close, 1);
    advance(0);
    ck_assert_int_eq(phase(), CONN_IDLE); /* manual */
    ck_assert_int_eq(T->state_err[T->n_states - 1], M2MVPN_E_TUN);
    ck_assert_uint_eq(count_events(M2MVPN_EVENT_REKEYED), 0);
    conn_status st;
    conn_get_status(T->c, &st);
    ck_assert_uint_eq(st.rekeys, 0);
}
END_TEST

/* ------------------------------------------------------------------ EAP */

/* No password for an EAP profile: WAIT_CREDENTIALS asks (no path, no SA);
 * conn_set_credentials answers and the attempt starts with them. */
START_TEST(eap_waits_for_credentials)
{
    auth_json = AUTH_EAP_NO_PASSWORD;
    use_profile("manual", 1, 0);
    conn_connect(T->c);
    ck_assert_int_eq(phase(), CONN_WAIT_CREDENTIALS);
    ck_assert_int_eq(last_state(), M2MVPN_STATE_CONNECTING);
    ck_assert_uint_eq(count_events(M2MVPN_EVENT_CREDENTIALS_REQUIRED), 1);
    ck_assert_uint_eq(T->f.n_sa_start, 0);
    conn_connect(T->c); /* already waiting: nothing new */
    ck_assert_uint_eq(count_events(M2MVPN_EVENT_CREDENTIALS_REQUIRED), 1);
    conn_set_credentials(T->c, "dev7", "given-pw", 8);
    ck_assert_int_eq(phase(), CONN_NEGOTIATING);
    ck_assert_uint_eq(T->f.n_sa_start, 1);
    ck_assert(T->f.eap_given);
    ck_assert_str_eq(T->f.eap_user, "dev7");
    ck_assert_str_eq(T->f.eap_pass, "given-pw");
    established();
    ck_assert_int_eq(phase(), CONN_UP);
}
END_TEST

/* Credentials given before the connect are used without asking; the
 * profile's identity when no user is given. */
START_TEST(eap_credentials_before_connect)
{
    auth_json = AUTH_EAP_NO_PASSWORD;
    use_profile("manual", 1, 0);
    conn_set_credentials(T->c, NULL, "early-pw", 8);
    ck_assert_int_eq(phase(), CONN_IDLE);
    conn_connect(T->c);
    ck_assert_int_eq(phase(), CONN_NEGOTIATING);
    ck_assert_uint_eq(count_events(M2MVPN_EVENT_CREDENTIALS_REQUIRED), 0);
    ck_assert_str_eq(T->f.eap_user, "dev1");
    ck_assert_str_eq(T->f.eap_pass, "early-pw");
}
END_TEST

/* Always-on, the gateway refuses the password (AUTH_LOCAL, our fault):
 * reported once, the tunnel down with the error, never sent again, not
 * even after an hour; new credentials start an attempt with them. */
START_TEST(eap_refused_always_on_waits)
{
    auth_json = AUTH_EAP;
    use_profile("always-on", 1, 0);
    ck_assert_uint_eq(T->f.n_sa_start, 1);
    ck_assert_str_eq(T->f.eap_pass, "profile-pw");
    down(M2MVPN_E_AUTH_LOCAL, IKE_FAULT_LOCAL);
    ck_assert_int_eq(phase(), CONN_WAIT_CREDENTIALS);
    ck_assert_int_eq(last_state(), M2MVPN_STATE_IDLE);
    ck_assert_int_eq(T->state_err[T->n_states - 1], M2MVPN_E_AUTH_LOCAL);
    ck_assert_uint_eq(count_events(M2MVPN_EVENT_AUTH_FAILED), 1);
    ck_assert_uint_eq(count_events(M2MVPN_EVENT_CREDENTIALS_REQUIRED), 1);
    ck_assert_uint_eq(T->f.n_sa_release, 1);
    advance(3600 * 1000);
    conn_connect(T->c);
    advance(0);
    ck_assert_uint_eq(T->f.n_sa_start, 1);
    ck_assert_int_eq(phase(), CONN_WAIT_CREDENTIALS);
    conn_set_credentials(T->c, NULL, "new-pw", 6);
    ck_assert_int_eq(phase(), CONN_NEGOTIATING);
    ck_assert_uint_eq(T->f.n_sa_start, 2);
    ck_assert_str_eq(T->f.eap_pass, "new-pw");
    /* Refused again: that password is not resent either. */
    down(M2MVPN_E_AUTH_LOCAL, IKE_FAULT_LOCAL);
    ck_assert_int_eq(phase(), CONN_WAIT_CREDENTIALS);
    advance(3600 * 1000);
    ck_assert_uint_eq(T->f.n_sa_start, 2);
}
END_TEST

/* Manual: down after the refusal; the next connect does not resend the
 * password but asks (CONNECTING while it waits). */
START_TEST(eap_refused_manual_asks_on_connect)
{
    auth_json = AUTH_EAP;
    use_profile("manual", 1, 0);
    conn_connect(T->c);
    down(M2MVPN_E_AUTH_LOCAL, IKE_FAULT_LOCAL);
    ck_assert_int_eq(phase(), CONN_IDLE);
    ck_assert_int_eq(T->state_err[T->n_states - 1], M2MVPN_E_AUTH_LOCAL);
    ck_assert_uint_eq(count_events(M2MVPN_EVENT_CREDENTIALS_REQUIRED), 0);
    conn_connect(T->c);
    ck_assert_int_eq(phase(), CONN_WAIT_CREDENTIALS);
    ck_assert_int_eq(last_state(), M2MVPN_STATE_CONNECTING);
    ck_assert_uint_eq(count_events(M2MVPN_EVENT_CREDENTIALS_REQUIRED), 1);
    ck_assert_uint_eq(T->f.n_sa_start, 1);
    /* Disconnect while waiting: down; credentials then are kept. */
    conn_disconnect(T->c);
    ck_assert_int_eq(phase(), CONN_IDLE);
    conn_set_credentials(T->c, "dev1", "right-pw", 8);
    ck_assert_int_eq(phase(), CONN_IDLE);
    ck_assert_uint_eq(T->f.n_sa_start, 1);
    conn_connect(T->c);
    ck_assert_uint_eq(T->f.n_sa_start, 2);
    ck_assert_str_eq(T->f.eap_pass, "right-pw");
}
END_TEST

/* The refusal survives a reload of the same profile (a new profile_set):
 * the password is not sent again until it changes in the profile. */
START_TEST(eap_refusal_survives_a_reload)
{
    auth_json = AUTH_EAP;
    use_profile("manual", 1, 0);
    conn_connect(T->c);
    down(M2MVPN_E_AUTH_LOCAL, IKE_FAULT_LOCAL);
    profile_set_free(T->set); /* conn holds its own reference */
    T->set = NULL;
    use_profile("manual", 1, 0); /* the same file loaded again */
    conn_connect(T->c);
    ck_assert_int_eq(phase(), CONN_WAIT_CREDENTIALS);
    ck_assert_uint_eq(T->f.n_sa_start, 1);
    conn_disconnect(T->c);
    profile_set_free(T->set);
    T->set = NULL;
    auth_json = "{\"method\": \"eap\", \"eap\": {\"type\": \"mschapv2\", \"identity\": \"dev1\","
                " \"password\": \"changed-pw\"}}";
    use_profile("manual", 1, 0);
    conn_connect(T->c);
    ck_assert_int_eq(phase(), CONN_NEGOTIATING);
    ck_assert_uint_eq(T->f.n_sa_start, 2);
    ck_assert_str_eq(T->f.eap_pass, "changed-pw");
}
END_TEST

/* AUTH_LOCAL that is not about our password (the gateway had not proved
 * itself: fault PEER) is retried as any failure of the gateway's. */
START_TEST(eap_auth_failure_of_the_peer_is_retried)
{
    auth_json = AUTH_EAP;
    use_profile("always-on", 1, 0);
    down(M2MVPN_E_AUTH_LOCAL, IKE_FAULT_PEER);
    ck_assert_int_eq(phase(), CONN_BACKOFF);
    advance(CONN_BACKOFF_AUTH_MAX_MS * 2);
    ck_assert_uint_eq(T->f.n_sa_start, 2);
    ck_assert_str_eq(T->f.eap_pass, "profile-pw");
}
END_TEST

/* ------------------------------------------------------------ on-demand */

START_TEST(on_demand_traffic_and_idle)
{
    use_profile("on-demand", 1, 30);
    unsigned released = T->f.n_net_release;
    ck_assert_int_eq(phase(), CONN_ARMED);
    ck_assert_int_eq(T->f.net_arm_hold, 1);
    ck_assert_uint_eq(T->f.n_sa_start, 0);
    conn_post_traffic(T->c);
    ck_assert_uint_eq(T->f.n_sa_start, 0); /* from the loop */
    advance(0);
    ck_assert_int_eq(phase(), CONN_NEGOTIATING);
    ck_assert_uint_eq(T->f.n_sa_start, 1);
    established();
    ck_assert_int_eq(phase(), CONN_UP);
    /* Traffic every 20 s keeps it up. */
    for (int i = 0; i < 5; i++) {
        advance(20 * 1000);
        T->f.traffic += 3;
        advance(1000);
        ck_assert_int_eq(phase(), CONN_UP);
    }
    /* 30 s without: closed, armed again (routes and hold kept). */
    T->f.net_arm_hold = -1;
    for (int i = 0; i < 29; i++)
        advance(1000);
    ck_assert_int_eq(phase(), CONN_UP);
    advance(1000);
    advance(1000);
    ck_assert_int_eq(phase(), CONN_ARMED);
    ck_assert_int_eq(T->f.net_arm_hold, 1);
    ck_assert_uint_eq(T->f.n_net_release, released);
    ck_assert_int_eq(last_state(), M2MVPN_STATE_IDLE);
    /* And traffic brings it up again. */
    conn_post_traffic(T->c);
    advance(0);
    ck_assert_int_eq(phase(), CONN_NEGOTIATING);
}
END_TEST

/* After a failure the trigger waits out the back-off: traffic during it
 * does not start an attempt, the first packet after it does. */
START_TEST(on_demand_failure_backs_off)
{
    T->f.rnd = 0;
    use_profile("on-demand", 1, 30);
    conn_post_traffic(T->c);
    advance(0);
    ck_assert_int_eq(phase(), CONN_NEGOTIATING);
    down(M2MVPN_E_TIMEOUT, IKE_FAULT_PEER);
    ck_assert_int_eq(phase(), CONN_ARMED);
    ck_assert_int_eq(T->state_err[T->n_states - 1], M2MVPN_E_TIMEOUT);
    ck_assert_int_eq(T->f.net_arm_hold, 0); /* no trigger yet */
    uint64_t wait = conn_backoff_ms(0, false, 0);
    advance(wait - 1);
    ck_assert_int_eq(T->f.net_arm_hold, 0);
    advance(1);
    ck_assert_int_eq(T->f.net_arm_hold, 1);
    conn_post_traffic(T->c);
    advance(0);
    ck_assert_int_eq(phase(), CONN_NEGOTIATING);
    ck_assert_uint_eq(T->f.n_sa_start, 2);
    /* The second failure waits twice as long. */
    down(M2MVPN_E_TIMEOUT, IKE_FAULT_PEER);
    advance(conn_backoff_ms(1, false, 0) - 1);
    ck_assert_int_eq(T->f.net_arm_hold, 0);
    advance(1);
    ck_assert_int_eq(T->f.net_arm_hold, 1);
}
END_TEST

START_TEST(on_demand_disconnect_disarms)
{
    use_profile("on-demand", 1, 30);
    conn_disconnect(T->c);
    ck_assert_int_eq(phase(), CONN_IDLE);
    conn_post_traffic(T->c);
    advance(0);
    ck_assert_int_eq(phase(), CONN_IDLE);
    conn_connect(T->c);
    ck_assert_int_eq(phase(), CONN_NEGOTIATING);
}
END_TEST

/* -------------------------------------------------------- profile switch */

static void use_json(const char *json)
{
    char err[256];
    profile_set *set = NULL;
    ck_assert_msg(profile_set_parse(json, strlen(json), NULL, &set, err, sizeof(err)) == 0, "%s", err);
    conn_set_profile(T->c, set, &set->items[0]);
    profile_set_free(T->set);
    T->set = set;
}

#define KS_PROFILE(tun)                                                                            \
    "{\"version\": 1, \"name\": \"ks-" tun "\", \"mode\": \"manual\","                            \
    " \"gateways\": [{\"host\": \"198.51.100.1\"}], \"local_id\": \"dev1.m2m.test\","               \
    " \"remote_id\": \"gw.m2m.test\", \"auth\": " AUTH_PSK ","                                       \
    " \"tunnel\": {\"tun_name\": \"" tun "\", \"remote_ts\": [\"198.18.0.0/16\"], \"kill_switch\": true}}"

/* A switch between two kill-switch profiles on different TUNs arms the new
 * one before the old one's network is removed: a prefix both protect is
 * never without it. */
START_TEST(switch_arms_the_new_kill_switch_first)
{
    use_json(KS_PROFILE("m2m1"));
    ck_assert_msg(strstr(T->f.net_ops, "arm(m2m1)"), "%s", T->f.net_ops);
    T->f.net_ops[0] = '\0';
    use_json(KS_PROFILE("m2m2"));
    ck_assert_str_eq(T->f.net_ops, "release(keep) arm(m2m2) remove(m2m1)");
    T->f.net_ops[0] = '\0';
    profile_set_free(T->set); /* conn holds its own reference */
    T->set = NULL;
    use_profile("manual", 1, 0); /* the kill switch is on by default, TUN m2m0 */
    ck_assert_str_eq(T->f.net_ops, "release(keep) arm(m2m0) remove(m2m2)");
    /* The same TUN name: nothing to remove. */
    T->f.net_ops[0] = '\0';
    profile_set_free(T->set);
    T->set = NULL;
    use_profile("always-on", 1, 0);
    ck_assert_msg(!strstr(T->f.net_ops, "remove"), "%s", T->f.net_ops);
}
END_TEST

#define GW_PROFILE(name, gw)                                                                       \
    "{\"version\": 1, \"name\": \"" name "\", \"mode\": \"manual\","                                 \
    " \"gateways\": [{\"host\": \"" gw "\"}], \"local_id\": \"dev1.m2m.test\","                         \
    " \"remote_id\": \"gw.m2m.test\", \"auth\": " AUTH_PSK ","                                       \
    " \"tunnel\": {\"remote_ts\": [\"198.18.0.0/16\"]}}"

/* A switch while up to a profile on the same gateway and TUN: the new IKE
 * SA comes up next to the old one (up -> reauthenticating -> up, public
 * state CONNECTED throughout, nothing closed), and a STATE_CHANGED says
 * "make-before-break". To another gateway likewise (the new IKE SA goes
 * there); when that one assigns another virtual IP, the event says
 * "shortest gap" and which. Another TUN: break-before-make, and the move
 * says why. */
START_TEST(switch_make_before_break)
{
    use_json(GW_PROFILE("a", "198.51.100.1"));
    conn_connect(T->c);
    established();
    ck_assert_int_eq(phase(), CONN_UP);
    size_t n_states = T->n_states;
    use_json(GW_PROFILE("b", "198.51.100.1"));
    ck_assert_int_eq(phase(), CONN_REAUTHENTICATING);
    ck_assert_str_eq(conn_profile_name(T->c), "b");
    ck_assert_uint_eq(T->f.n_reauth_start, 1);
    ck_assert_uint_eq(T->f.n_sa_close, 0);
    reauthenticated(0x55555555);
    ck_assert_int_eq(phase(), CONN_UP);
    for (size_t i = n_states; i < T->n_states; i++)
        ck_assert_int_eq(T->states[i], M2MVPN_STATE_CONNECTED);
    ck_assert_uint_eq(T->f.n_sa_close, 0);
    ck_assert_uint_eq(T->f.n_sa_release, 0);
    ck_assert_uint_eq(T->f.n_child_remove, 0);
    ck_assert_int_eq(T->events[T->n_events - 1], M2MVPN_EVENT_STATE_CHANGED);
    ck_assert_ptr_nonnull(strstr(T->logbuf, "make-before-break: switched to profile b"));
    conn_status st;
    conn_get_status(T->c, &st);
    ck_assert_uint_eq(st.spi_in, 0x55555555);
    ck_assert_uint_eq(st.reconnects, 0);

    /* Another gateway, the same virtual IP: make-before-break. */
    use_json(GW_PROFILE("c", "198.51.100.9"));
    ck_assert_int_eq(phase(), CONN_REAUTHENTICATING);
    ck_assert_uint_eq(T->f.n_reauth_start, 2);
    ck_assert_uint_eq(T->f.n_sa_close, 0);
    reauthenticated(0x66666666);
    ck_assert_int_eq(phase(), CONN_UP);
    ck_assert_ptr_nonnull(strstr(T->logbuf, "make-before-break: switched to profile c at 198.51.100.9:500"));
    conn_get_status(T->c, &st);
    ck_assert_str_eq(st.gateway, "198.51.100.9:500");

    /* Back, and that gateway assigns another virtual IP: the shortest gap. */
    n_states = T->n_states;
    use_json(GW_PROFILE("d", "198.51.100.1"));
    ck_assert_uint_eq(T->f.n_reauth_start, 3);
    reauthenticated_vip(0x77777777, 7);
    ck_assert_int_eq(phase(), CONN_UP);
    for (size_t i = n_states; i < T->n_states; i++)
        ck_assert_int_eq(T->states[i], M2MVPN_STATE_CONNECTED);
    ck_assert_int_eq(T->events[T->n_events - 1], M2MVPN_EVENT_STATE_CHANGED);
    ck_assert_ptr_nonnull(strstr(T->logbuf, "shortest gap (virtual IP 198.18.1.7, was 198.18.1.1): switched to "
                                            "profile d at 198.51.100.1:500"));
    conn_get_status(T->c, &st);
    ck_assert_str_eq(st.virtual_ip, "198.18.1.7");
    ck_assert_uint_eq(st.reconnects, 0);

    /* Another TUN: the old tunnel goes first. */
    use_json("{\"version\": 1, \"name\": \"e\", \"mode\": \"manual\","
             " \"gateways\": [{\"host\": \"198.51.100.1\"}], \"local_id\": \"dev1.m2m.test\","
             " \"remote_id\": \"gw.m2m.test\", \"auth\": " AUTH_PSK ","
             " \"tunnel\": {\"tun_name\": \"m2m7\", \"remote_ts\": [\"198.18.0.0/16\"]}}");
    ck_assert_uint_eq(T->f.n_reauth_start, 3);
    ck_assert_uint_eq(T->f.n_sa_close, 1);
    ck_assert_int_eq(phase(), CONN_NEGOTIATING);
    ck_assert_ptr_nonnull(strstr(T->logbuf, "-> negotiating (break-before-make: another TUN (m2m7, was m2m0))"));
}
END_TEST

/* The new profile's IKE SA fails: break-before-make with the new profile
 * (the old SA ran the previous one), the move says so. */
START_TEST(switch_new_sa_fails)
{
    use_json(GW_PROFILE("a", "198.51.100.1"));
    conn_connect(T->c);
    established();
    T->f.close_posts_down = false;
    use_json(GW_PROFILE("b", "198.51.100.1"));
    ck_assert_int_eq(phase(), CONN_REAUTHENTICATING);
    conn_post_reauth_failed(T->c, M2MVPN_E_TIMEOUT, IKE_FAULT_PEER, "no answer");
    advance(0);
    ck_assert_int_eq(phase(), CONN_RESTARTING);
    ck_assert_ptr_nonnull(strstr(T->logbuf, "break-before-make: the new profile's IKE SA failed: no answer"));
    ck_assert_uint_eq(T->f.n_sa_close, 1);
    down(0, IKE_FAULT_LOCAL);
    ck_assert_int_eq(phase(), CONN_NEGOTIATING);
    ck_assert_str_eq(conn_profile_name(T->c), "b");
}
END_TEST

/* --------------------------------------------------------------- status */

START_TEST(status_last_transition)
{
    reach(CONN_UP);
    conn_status st;
    conn_get_status(T->c, &st);
    ck_assert_int_eq(st.last_change, (int64_t)(fake_now / 1000));
    ck_assert_msg(strstr(st.last_reason, "CHILD SA 11111111 up"), "%s", st.last_reason);
    ck_assert_str_eq(st.virtual_ip, "198.18.1.1");
    ck_assert_uint_eq(st.reconnects, 0);
}
END_TEST

/* ------------------------------------------------------------- roaming */

static uint64_t roams(void)
{
    conn_status st;
    conn_get_status(T->c, &st);
    return st.roams;
}

/* Moved with MOBIKE: UP -> ROAMING -> UP, the same SA, ROAMED, counted;
 * the public state stays CONNECTED throughout. */
START_TEST(roam_with_mobike)
{
    reach(CONN_UP);
    conn_post_path_changed(T->c, "path moved from A to B");
    advance(0);
    ck_assert_int_eq(phase(), CONN_ROAMING);
    ck_assert_uint_eq(T->f.n_roam, 1);
    ck_assert_str_eq(T->f.roam_reason, "path moved from A to B");
    ck_assert_int_eq(last_state(), M2MVPN_STATE_CONNECTED);
    conn_post_addresses_updated(T->c, 0, true, "gateway moved the SAs");
    advance(0);
    ck_assert_int_eq(phase(), CONN_UP);
    ck_assert_uint_eq(roams(), 1);
    ck_assert_uint_eq(count_events(M2MVPN_EVENT_ROAMED), 1);
    ck_assert_uint_eq(T->f.n_sa_start, 1); /* no new SA */
    ck_assert_uint_eq(T->f.n_sa_close, 0);
    ck_assert(strstr(T->logbuf, "up -> roaming (path moved from A to B)") != NULL);
    ck_assert(strstr(T->logbuf, "roaming -> up (gateway moved the SAs)") != NULL);
    /* the timeout went with the answer */
    advance(CONN_ROAM_TIMEOUT_MS + 1);
    ck_assert_int_eq(phase(), CONN_UP);
}
END_TEST

/* Every way the move can fail is the fastest reconnect: at once, no
 * back-off, counted as a reconnect, never as a roam. */
static const struct {
    const char *what;
    int roam_err;            /* what the ops answer */
    int update_err;          /* what the gateway answers (0: nothing) */
    bool silent;             /* no answer at all */
} roam_fail[] = {
    { "no MOBIKE", M2MVPN_E_NOTSUPP, 0, false },
    { "no update possible", M2MVPN_E_STATE, 0, false },
    { "update refused", 0, M2MVPN_E_PROTOCOL, false },
    { "no answer", 0, 0, true },
};

START_TEST(roam_failure_reconnects_at_once)
{
    reach(CONN_UP);
    T->f.roam_err = roam_fail[_i].roam_err;
    T->n_delays = 0;
    conn_post_path_changed(T->c, "path moved");
    advance(0);
    if (roam_fail[_i].update_err) {
        ck_assert_int_eq(phase(), CONN_ROAMING);
        conn_post_addresses_updated(T->c, roam_fail[_i].update_err, true, "refused");
        advance(0);
    } else if (roam_fail[_i].silent) {
        advance(CONN_ROAM_TIMEOUT_MS - 1);
        ck_assert_int_eq(phase(), CONN_ROAMING);
        advance(1);
    }
    ck_assert_msg(phase() == CONN_NEGOTIATING, "%s: %s", roam_fail[_i].what, conn_phase_name(phase()));
    ck_assert_uint_eq(T->f.n_sa_start, 2);
    ck_assert_uint_eq(T->f.n_sa_close, 1);
    ck_assert_uint_eq(T->n_delays, 0); /* no back-off */
    ck_assert_int_eq(last_state(), M2MVPN_STATE_RECONNECTING);
    ck_assert(strstr(T->logbuf, "roaming -> restarting") != NULL);
    established();
    conn_status st;
    conn_get_status(T->c, &st);
    ck_assert_uint_eq(st.reconnects, 1);
    ck_assert_uint_eq(st.roams, 0);
    ck_assert_uint_eq(count_events(M2MVPN_EVENT_ROAMED), 0);
}
END_TEST

/* A NAT mapping that changed under us (lib/ike updated the SA by itself):
 * no move, one roam, ROAMED; a failed one changes nothing. */
START_TEST(roam_nat_mapping)
{
    reach(CONN_UP);
    conn_post_addresses_updated(T->c, 0, false, "NAT mapping changed");
    advance(0);
    ck_assert_int_eq(phase(), CONN_UP);
    ck_assert_uint_eq(roams(), 1);
    ck_assert_uint_eq(count_events(M2MVPN_EVENT_ROAMED), 1);
    conn_post_addresses_updated(T->c, M2MVPN_E_PROTOCOL, false, "refused");
    advance(0);
    ck_assert_int_eq(phase(), CONN_UP);
    ck_assert_uint_eq(roams(), 1);
}
END_TEST

/* Moved again before the answer: a newer update; disconnect while roaming
 * closes; a path change while idle is no move. */
START_TEST(roam_again_disconnect_and_elsewhere)
{
    T->f.close_posts_down = false;
    reach(CONN_ROAMING);
    conn_post_path_changed(T->c, "moved again");
    advance(0);
    ck_assert_int_eq(phase(), CONN_ROAMING);
    ck_assert_uint_eq(T->f.n_roam, 2);
    conn_disconnect(T->c);
    ck_assert_int_eq(phase(), CONN_CLOSING);
    down(0, IKE_FAULT_LOCAL);
    ck_assert_int_eq(phase(), CONN_IDLE);
    conn_post_path_changed(T->c, "moved while idle");
    advance(0);
    ck_assert_int_eq(phase(), CONN_IDLE);
    ck_assert_uint_eq(T->f.n_roam, 2);
}
END_TEST

/* Waiting to retry after a failure: the new path is tried at once. */
START_TEST(roam_backoff_retries_now)
{
    reach(CONN_BACKOFF);
    unsigned starts = T->f.n_sa_start;
    conn_post_path_changed(T->c, "path moved");
    advance(0);
    ck_assert_int_eq(phase(), CONN_NEGOTIATING);
    ck_assert_uint_eq(T->f.n_sa_start, starts + 1);
    ck_assert_uint_eq(T->f.n_roam, 0);
}
END_TEST

/* After an authentication failure a new path fixes nothing: the longer
 * schedule holds (a flapping link, or anyone on the LAN who can move our
 * route with router advertisements, must not make us retry the refused
 * authentication at the rate of the flaps). */
START_TEST(roam_backoff_after_auth_failure_waits)
{
    use_profile("always-on", 1, 0);
    conn_connect(T->c);
    ck_assert_int_eq(phase(), CONN_NEGOTIATING);
    unsigned starts = T->f.n_sa_start;
    down(M2MVPN_E_AUTH_PEER, IKE_FAULT_PEER);
    ck_assert_int_eq(phase(), CONN_BACKOFF);
    for (int i = 0; i < 5; i++) {
        conn_post_path_changed(T->c, "path moved");
        advance(0);
    }
    ck_assert_int_eq(phase(), CONN_BACKOFF);
    ck_assert_uint_eq(T->f.n_sa_start, starts);
    advance(conn_backoff_ms(0, true, T->f.rnd));
    ck_assert_int_eq(phase(), CONN_NEGOTIATING);
    ck_assert_uint_eq(T->f.n_sa_start, starts + 1);
}
END_TEST

/* A path change during a reauthentication: the new IKE SA (made on the old
 * path) is dropped, the SA that carries the tunnel roams (reauthenticating
 * -> roaming, still CONNECTED, nothing closed); the reauthentication is
 * tried again a tenth of reauth_s after the move, on the new path. */
START_TEST(roam_during_reauth)
{
    reach(CONN_REAUTHENTICATING);
    ck_assert_uint_eq(T->f.n_reauth_start, 1);
    conn_post_path_changed(T->c, "path moved from A to B");
    advance(0);
    ck_assert_int_eq(phase(), CONN_ROAMING);
    ck_assert_uint_eq(T->f.n_reauth_abort, 1);
    ck_assert_uint_eq(T->f.n_roam, 1);
    ck_assert_int_eq(last_state(), M2MVPN_STATE_CONNECTED);
    ck_assert_ptr_nonnull(strstr(T->logbuf, "reauthenticating -> roaming (path moved from A to B; "
                                            "reauthentication dropped"));
    /* Whatever the dropped SA may still report is not used. */
    reauthenticated(0x55555555);
    ck_assert_uint_eq(T->f.n_reauth_install, 0);
    ck_assert_int_eq(phase(), CONN_ROAMING);
    conn_post_reauth_failed(T->c, M2MVPN_E_TIMEOUT, IKE_FAULT_PEER, "no answer");
    advance(0);
    ck_assert_int_eq(phase(), CONN_ROAMING);
    conn_post_addresses_updated(T->c, 0, true, "gateway moved the SAs");
    advance(0);
    ck_assert_int_eq(phase(), CONN_UP);
    ck_assert_uint_eq(roams(), 1);
    ck_assert_uint_eq(T->f.n_sa_close, 0);
    ck_assert_uint_eq(T->f.n_sa_start, 1);
    advance(9999);
    ck_assert_uint_eq(T->f.n_reauth_start, 1);
    advance(1);
    ck_assert_int_eq(phase(), CONN_REAUTHENTICATING);
    ck_assert_uint_eq(T->f.n_reauth_start, 2);
    reauthenticated(0x66666666);
    ck_assert_int_eq(phase(), CONN_UP);
    ck_assert_uint_eq(T->f.n_reauth_install, 1);
}
END_TEST

/* A reauthentication due while roaming waits until the move is done (then
 * a tenth of reauth_s), never two IKE exchanges for the path at once; a
 * roam does not restart the reauthentication schedule. */
START_TEST(reauth_due_while_roaming)
{
    reauth_s = 100;
    reach(CONN_UP);
    advance(85000);
    conn_post_path_changed(T->c, "path moved from A to B");
    advance(0);
    ck_assert_int_eq(phase(), CONN_ROAMING);
    advance(442); /* due now (85.442 s) */
    ck_assert_int_eq(phase(), CONN_ROAMING);
    ck_assert_uint_eq(T->f.n_reauth_start, 0);
    conn_post_addresses_updated(T->c, 0, true, "gateway moved the SAs");
    advance(0);
    ck_assert_int_eq(phase(), CONN_UP);
    ck_assert_uint_eq(T->f.n_reauth_start, 0);
    advance(10000);
    ck_assert_int_eq(phase(), CONN_REAUTHENTICATING);
    ck_assert_uint_eq(T->f.n_reauth_start, 1);
}
END_TEST

/* A path change during a make-before-break profile switch: the new
 * profile's IKE SA was made on the old path; it is dropped and the switch
 * becomes break-before-make on the new path (the move says why). */
START_TEST(roam_during_switch)
{
    use_json(GW_PROFILE("a", "198.51.100.1"));
    conn_connect(T->c);
    established();
    use_json(GW_PROFILE("b", "198.51.100.1"));
    ck_assert_int_eq(phase(), CONN_REAUTHENTICATING);
    conn_post_path_changed(T->c, "path moved from A to B");
    advance(0);
    ck_assert_uint_eq(T->f.n_reauth_abort, 1);
    ck_assert_uint_eq(T->f.n_roam, 0);
    ck_assert_uint_eq(T->f.n_sa_close, 1);
    ck_assert_int_eq(phase(), CONN_NEGOTIATING);
    ck_assert_uint_eq(T->f.n_sa_start, 2);
    ck_assert_str_eq(conn_profile_name(T->c), "b");
    ck_assert_ptr_nonnull(strstr(T->logbuf, "break-before-make: the new profile's IKE SA was on the old path"));
    reauthenticated(0x55555555); /* late: not used */
    ck_assert_uint_eq(T->f.n_reauth_install, 0);
    established();
    ck_assert_int_eq(phase(), CONN_UP);
}
END_TEST



/* RTM_GETROUTE: the kernel's way to an address (loopback is there in any
 * namespace, without root): its source address and interface. */
START_TEST(netwatch_route_lookup)
{
    struct sockaddr_storage dst;
    memset(&dst, 0, sizeof(dst));
    struct sockaddr_in *in = (struct sockaddr_in *)&dst;
    in->sin_family = AF_INET;
    in->sin_addr.s_addr = htonl(0x7f000001);
    netwatch_path p, q;
    char err[160];
    ck_assert_msg(netwatch_route_to(&dst, 0, &p, err, sizeof(err)) == 0, "%s", err);
    ck_assert_str_eq(p.ifname, "lo");
    ck_assert_int_eq(p.src.ss_family, AF_INET);
    ck_assert_uint_eq(((struct sockaddr_in *)&p.src)->sin_addr.s_addr, htonl(0x7f000001));
    ck_assert_msg(netwatch_route_to(&dst, 0, &q, err, sizeof(err)) == 0, "%s", err);
    ck_assert(netwatch_path_equal(&p, &q));
    char text[96];
    netwatch_path_text(&p, text, sizeof(text));
    ck_assert_str_eq(text, "127.0.0.1 on lo");
    q.oif++;
    ck_assert(!netwatch_path_equal(&p, &q));
}
END_TEST


/* A failed route lookup (the way lost for a moment, or a lookup after
 * the gateway moved) must not end roaming for the rest of the SA: the
 * last path found is kept, and the next lookup that succeeds is compared
 * with it (the way back on another address is a move). An attempt that
 * started without a way takes the first one found as its baseline. */
static netwatch_path path_at(const char *src, int oif)
{
    netwatch_path p;
    memset(&p, 0, sizeof(p));
    struct sockaddr_in *in = (struct sockaddr_in *)&p.src;
    in->sin_family = AF_INET;
    inet_pton(AF_INET, src, &in->sin_addr);
    p.src_len = sizeof(*in);
    p.oif = oif;
    snprintf(p.ifname, sizeof(p.ifname), "eth%d", oif);
    return p;
}

START_TEST(netwatch_track_recovers_after_failed_lookup)
{
    netwatch_path last, a = path_at("198.51.100.10", 1), b = path_at("198.51.100.20", 2);
    memset(&last, 0, sizeof(last));
    bool known = false;
    ck_assert_int_eq(netwatch_track(&last, &known, true, &a), NETWATCH_FIRST);
    ck_assert_int_eq(netwatch_track(&last, &known, true, &a), NETWATCH_SAME);
    ck_assert_int_eq(netwatch_track(&last, &known, false, NULL), NETWATCH_LOST);
    ck_assert(known); /* still watched */
    ck_assert_int_eq(netwatch_track(&last, &known, false, NULL), NETWATCH_LOST);
    ck_assert_int_eq(netwatch_track(&last, &known, true, &b), NETWATCH_MOVED);
    ck_assert(netwatch_path_equal(&last, &b));
    ck_assert_int_eq(netwatch_track(&last, &known, true, &b), NETWATCH_SAME);
    ck_assert_int_eq(netwatch_track(&last, &known, false, NULL), NETWATCH_LOST);
    ck_assert_int_eq(netwatch_track(&last, &known, true, &b), NETWATCH_SAME); /* back where it was */

    /* No way when the attempt started: the first one found is the baseline. */
    known = false;
    ck_assert_int_eq(netwatch_track(&last, &known, false, NULL), NETWATCH_LOST);
    ck_assert(!known);
    ck_assert_int_eq(netwatch_track(&last, &known, true, &a), NETWATCH_FIRST);
    ck_assert_int_eq(netwatch_track(&last, &known, true, &b), NETWATCH_MOVED);
}
END_TEST

/* The kernel is the only sender netwatch listens to: a message another
 * process sends to its socket (unicast, nl_pid not 0) is no address or
 * route event, and must not start a path check (a move or reconnect). */
static unsigned nw_changes;
static void nw_on_change(void *arg)
{
    (void)arg;
    nw_changes++;
}

/* Our socket that joined groups (netwatch's): its port ID from
 * /proc/net/netlink (libnl: the process ID in the low 22 bits). */
static uint32_t netwatch_port(void)
{
    FILE *f = fopen("/proc/net/netlink", "r");
    ck_assert_ptr_nonnull(f);
    char line[256];
    uint32_t port = 0;
    while (fgets(line, sizeof(line), f)) {
        unsigned long long sk;
        int proto;
        unsigned pid, groups;
        if (sscanf(line, "%llx %d %u %x", &sk, &proto, &pid, &groups) == 4 && proto == NETLINK_ROUTE &&
            groups != 0 && (pid & 0x3fffff) == ((unsigned)getpid() & 0x3fffff))
            port = pid;
    }
    fclose(f);
    return port;
}

START_TEST(netwatch_ignores_other_senders)
{
    netwatch *w = NULL;
    char err[160];
    nw_changes = 0;
    /* As root, in a namespace of its own: a real event must still count. */
    bool own_ns = unshare(CLONE_NEWNET) == 0;
    ck_assert_msg(netwatch_new(&T->loop, &T->log, nw_on_change, NULL, &w, err, sizeof(err)) == 0, "%s", err);
    uint32_t port = netwatch_port();
    ck_assert_uint_ne(port, 0);
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    ck_assert_int_ge(fd, 0);
    struct {
        struct nlmsghdr h;
        struct ifaddrmsg ifa;
    } forged = { .h = { .nlmsg_len = sizeof(forged), .nlmsg_type = RTM_DELADDR },
                 .ifa = { .ifa_family = AF_INET, .ifa_prefixlen = 24, .ifa_index = 1 } };
    struct sockaddr_nl to = { .nl_family = AF_NETLINK, .nl_pid = port };
    ssize_t n = sendto(fd, &forged, sizeof(forged), 0, (struct sockaddr *)&to, sizeof(to));
    /* Without CAP_NET_ADMIN the kernel refuses it already. */
    ck_assert_msg(n == (ssize_t)sizeof(forged) || errno == EPERM, "sendto: %s", strerror(errno));
    close(fd);
    for (int i = 0; i < 5; i++) {
        ck_assert_int_ge(core_loop_run_once(&T->loop, 20), 0);
        fake_now += NETWATCH_SETTLE_MS + 1;
    }
    ck_assert_uint_eq(nw_changes, 0);
    if (own_ns) {
        /* the kernel's own: lo up (RTM_NEWLINK, RTM_NEWADDR) */
        int s4 = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        struct ifreq ifr = { .ifr_name = "lo" };
        ck_assert_int_eq(ioctl(s4, SIOCGIFFLAGS, &ifr), 0);
        ifr.ifr_flags |= IFF_UP;
        ck_assert_int_eq(ioctl(s4, SIOCSIFFLAGS, &ifr), 0);
        close(s4);
        for (int i = 0; i < 5; i++) {
            ck_assert_int_ge(core_loop_run_once(&T->loop, 20), 0);
            fake_now += NETWATCH_SETTLE_MS + 1;
        }
        ck_assert_uint_ge(nw_changes, 1);
    }
    netwatch_free(w);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("conn");
    TCase *tc = tcase_create("table");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, phase_names_distinct);
    tcase_add_loop_test(tc, every_transition, 0, CONN_PHASE__COUNT * CONN_PHASE__COUNT);
    tcase_add_loop_test(tc, public_state_per_phase, 0, 9);
    suite_add_tcase(s, tc);

    tc = tcase_create("recovery");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, backoff_schedule);
    tcase_add_test(tc, backoff_in_the_machine);
    tcase_add_loop_test(tc, which_errors_are_retried, 0, sizeof(retry_cases) / sizeof(retry_cases[0]));
    tcase_add_test(tc, failover);
    tcase_add_test(tc, pin_wrong_is_never_retried);
    tcase_add_test(tc, pin_right_goes_on);
    tcase_add_test(tc, disconnect_while_waiting_for_the_pin);
    tcase_add_test(tc, connect_during_disconnect);
    tcase_add_test(tc, disconnect_stays_down);
    tcase_add_test(tc, down_is_posted);
    tcase_add_test(tc, install_failure);
    tcase_add_test(tc, rekey_requests_coalesced);
    tcase_add_test(tc, rekey_is_no_move);
    tcase_add_test(tc, rekey_impossible_renews_at_hard_limit);
    tcase_add_test(tc, rekey_install_failure);
    tcase_add_test(tc, roam_with_mobike);
    tcase_add_loop_test(tc, roam_failure_reconnects_at_once, 0, sizeof(roam_fail) / sizeof(roam_fail[0]));
    tcase_add_test(tc, roam_nat_mapping);
    tcase_add_test(tc, roam_again_disconnect_and_elsewhere);
    tcase_add_test(tc, roam_backoff_retries_now);
    tcase_add_test(tc, roam_backoff_after_auth_failure_waits);
    tcase_add_test(tc, netwatch_route_lookup);
    tcase_add_test(tc, netwatch_track_recovers_after_failed_lookup);
    tcase_add_test(tc, netwatch_ignores_other_senders);
    tcase_add_test(tc, reauth_make_before_break);
    tcase_add_test(tc, reauth_failures);
    tcase_add_test(tc, reauth_disconnect_and_off);
    tcase_add_test(tc, roam_during_reauth);
    tcase_add_test(tc, reauth_due_while_roaming);
    tcase_add_test(tc, roam_during_switch);
    suite_add_tcase(s, tc);

    tc = tcase_create("credentials");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, eap_waits_for_credentials);
    tcase_add_test(tc, eap_credentials_before_connect);
    tcase_add_test(tc, eap_refused_always_on_waits);
    tcase_add_test(tc, eap_refused_manual_asks_on_connect);
    tcase_add_test(tc, eap_refusal_survives_a_reload);
    tcase_add_test(tc, eap_auth_failure_of_the_peer_is_retried);
    suite_add_tcase(s, tc);

    tc = tcase_create("on-demand");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, on_demand_traffic_and_idle);
    tcase_add_test(tc, on_demand_failure_backs_off);
    tcase_add_test(tc, on_demand_disconnect_disarms);
    tcase_add_test(tc, status_last_transition);
    tcase_add_test(tc, switch_arms_the_new_kill_switch_first);
    tcase_add_test(tc, switch_make_before_break);
    tcase_add_test(tc, switch_new_sa_fails);
    suite_add_tcase(s, tc);

    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
