/* SPDX-License-Identifier: Apache-2.0 */
/*
 * pos_on_demand — the on-demand pattern (POS terminal, parking meter).
 *
 * The tunnel exists only while it is needed: connect, wait until it is up
 * (with a deadline), do the payment through it, disconnect, and wait until it
 * is down. The exit status tells the outcome, so a script or the terminal's
 * application can act on it:
 *
 *   0  payment done, tunnel taken down again
 *   1  setting up failed (handle, profile, engine); reason on stderr
 *   2  the tunnel could not be brought up (connect refused, authentication
 *      failed, gateway unreachable, a PIN or password was asked for, ...)
 *   3  the tunnel was not up within CONNECT_TIMEOUT_S
 *   4  the payment itself failed
 *   64 usage error
 *
 *   usage: pos_on_demand PROFILE.json [CONNECT_TIMEOUT_S]
 *
 * The engine runs on the library's thread (m2mvpn_start); the main thread
 * waits on a condition variable that the event callback signals.
 */
#define _POSIX_C_SOURCE 200809L

#include <m2mvpn/m2mvpn.h>

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum {
    EXIT_PAID = 0,
    EXIT_SETUP = 1,
    EXIT_NO_TUNNEL = 2,
    EXIT_TIMEOUT = 3,
    EXIT_PAYMENT = 4,
    EXIT_USAGE = 64
};

/* What the callback (engine thread) tells the main thread. */
typedef struct tunnel_watch {
    pthread_mutex_t lock;
    pthread_cond_t changed;
    m2mvpn_state state;
    bool failed;             /* the attempt ended: see error/detail */
    int error;
    char detail[256];        /* copied: ev->detail dies with the callback */
} tunnel_watch;

static void watch_fail(tunnel_watch *w, int error, const char *detail)
{
    w->failed = true;
    w->error = error;
    snprintf(w->detail, sizeof(w->detail), "%s", detail);
}

static void on_event(m2mvpn *h, const m2mvpn_event *ev, void *userdata)
{
    (void)h;
    tunnel_watch *w = userdata;
    pthread_mutex_lock(&w->lock);
    switch (ev->type) {
    case M2MVPN_EVENT_STATE_CHANGED:
        w->state = ev->state;
        /* Back to idle with an error while we wait: this attempt is over. */
        if (ev->state == M2MVPN_STATE_IDLE && ev->error)
            watch_fail(w, ev->error, ev->detail);
        break;
    case M2MVPN_EVENT_AUTH_FAILED:
        watch_fail(w, ev->error ? ev->error : M2MVPN_E_AUTH_LOCAL, ev->detail);
        break;
    case M2MVPN_EVENT_PIN_REQUIRED:
    case M2MVPN_EVENT_CREDENTIALS_REQUIRED:
        /* A terminal would ask its user or its secure element here and
         * answer with m2mvpn_enter_pin() / m2mvpn_set_credentials() (both may
         * be called from this callback). This example has nothing to answer
         * with, so the attempt counts as failed; a PIN is never guessed. */
        watch_fail(w, ev->type == M2MVPN_EVENT_PIN_REQUIRED ? M2MVPN_E_PIN : M2MVPN_E_CREDENTIALS,
                   "a secret was asked for and this example has none to give");
        break;
    default:
        break;
    }
    pthread_cond_broadcast(&w->changed);
    pthread_mutex_unlock(&w->lock);
}

/* Wait until the tunnel reaches `want`, the attempt fails, or `timeout_s`
 * passes. Returns 0 (reached), -1 (failed) or -2 (timed out). */
static int wait_for_state(tunnel_watch *w, m2mvpn_state want, int timeout_s)
{
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += timeout_s;
    int r = 0;
    pthread_mutex_lock(&w->lock);
    while (w->state != want && !w->failed) {
        int e = pthread_cond_timedwait(&w->changed, &w->lock, &deadline);
        if (e == ETIMEDOUT) {
            r = -2;
            break;
        }
    }
    if (r == 0 && w->state != want)
        r = -1;
    pthread_mutex_unlock(&w->lock);
    return r;
}

/* Stand-in for the real work: talk to the acquirer's host through the
 * tunnel (its address lies inside the profile's tunnel.remote_ts). */
static bool do_payment(void)
{
    printf("paying 12.34 EUR through the tunnel ... approved\n");
    return true;
}

static int report(m2mvpn *h, const char *call, int err)
{
    fprintf(stderr, "pos_on_demand: %s: %s: %s\n", call, m2mvpn_strerror(err), m2mvpn_last_error(h));
    return err;
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s PROFILE.json [CONNECT_TIMEOUT_S]\n", argv[0]);
        return EXIT_USAGE;
    }
    long timeout_s = argc == 3 ? strtol(argv[2], NULL, 10) : 30;
    if (timeout_s < 1 || timeout_s > 600) {
        fprintf(stderr, "pos_on_demand: CONNECT_TIMEOUT_S must be 1..600\n");
        return EXIT_USAGE;
    }

    tunnel_watch w = { .state = M2MVPN_STATE_IDLE };
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* deadlines immune to clock steps */
    pthread_cond_init(&w.changed, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&w.lock, NULL);

    /* The callback gets &w as its userdata. */
    m2mvpn_callbacks cbs = { .struct_size = sizeof(cbs), .on_event = on_event };
    m2mvpn *h = NULL;
    int r = m2mvpn_new(&cbs, &w, &h);
    if (r < 0) {
        fprintf(stderr, "pos_on_demand: m2mvpn_new: %s\n", m2mvpn_strerror(r));
        return EXIT_SETUP;
    }

    int rc = EXIT_SETUP;
    if ((r = m2mvpn_profile_load_file(h, argv[1])) < 0) {
        report(h, "m2mvpn_profile_load_file", r);
        goto out;
    }
    if ((r = m2mvpn_start(h)) < 0) {
        report(h, "m2mvpn_start", r);
        goto out;
    }

    /* 1. Connect. A negative return means the request was refused outright
     *    and no event will follow for it. */
    rc = EXIT_NO_TUNNEL;
    if ((r = m2mvpn_connect(h)) < 0) {
        report(h, "m2mvpn_connect", r);
        goto out;
    }

    /* 2. Wait for CONNECTED, at most timeout_s seconds. */
    switch (wait_for_state(&w, M2MVPN_STATE_CONNECTED, (int)timeout_s)) {
    case 0:
        break;
    case -1:
        pthread_mutex_lock(&w.lock);
        fprintf(stderr, "pos_on_demand: tunnel failed: %s: %s\n", m2mvpn_strerror(w.error), w.detail);
        pthread_mutex_unlock(&w.lock);
        m2mvpn_disconnect(h); /* stop any retry before leaving */
        goto out;
    default:
        fprintf(stderr, "pos_on_demand: tunnel not up within %ld s\n", timeout_s);
        m2mvpn_disconnect(h);
        rc = EXIT_TIMEOUT;
        goto out;
    }

    /* 3. Pay. */
    rc = do_payment() ? EXIT_PAID : EXIT_PAYMENT;

    /* 4. Disconnect and wait until the tunnel is down, so the gateway is told
     *    (IKE DELETE) rather than left to find out by dead-peer detection. */
    if ((r = m2mvpn_disconnect(h)) < 0)
        report(h, "m2mvpn_disconnect", r);
    else if (wait_for_state(&w, M2MVPN_STATE_IDLE, 10) != 0)
        fprintf(stderr, "pos_on_demand: tunnel did not go down within 10 s\n");
out:
    m2mvpn_free(h); /* joins the engine thread: no callback runs after this */
    pthread_mutex_destroy(&w.lock);
    pthread_cond_destroy(&w.changed);
    return rc;
}
