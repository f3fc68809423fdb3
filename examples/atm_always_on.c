/* SPDX-License-Identifier: Apache-2.0 */
/*
 * atm_always_on — the always-on pattern (ATM, vending machine, tracker).
 *
 * The device keeps its tunnel up all the time. The program loads a profile
 * file, lets the library run its engine on a thread of its own
 * (m2mvpn_start), prints every event as it arrives and the status as JSON
 * every few seconds, and ends cleanly on SIGTERM (what a service manager
 * sends) or SIGINT (Ctrl-C).
 *
 *   usage: atm_always_on PROFILE.json [STATUS_INTERVAL_S]
 *
 * Exit status: 0 after SIGTERM/SIGINT, 1 when setting up failed (the reason
 * is printed on stderr), 2 on a usage error.
 *
 * Only the public API is used: <m2mvpn/m2mvpn.h>, linked with
 * `pkg-config --cflags --libs m2mvpn`.
 */
#define _POSIX_C_SOURCE 200809L

#include <m2mvpn/m2mvpn.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/*
 * Runs on the library's engine thread. Keep it short: print and return.
 * `ev` and every string in it are valid only during this call.
 */
static void on_event(m2mvpn *h, const m2mvpn_event *ev, void *userdata)
{
    (void)h;
    (void)userdata;
    if (ev->type == M2MVPN_EVENT_STATE_CHANGED)
        printf("event %s: %s -> %s", m2mvpn_event_name(ev->type), m2mvpn_state_name(ev->old_state),
               m2mvpn_state_name(ev->state));
    else
        printf("event %s (state %s)", m2mvpn_event_name(ev->type), m2mvpn_state_name(ev->state));
    if (ev->profile[0])
        printf(" profile=%s", ev->profile);
    if (ev->error)
        printf(" error=%s", m2mvpn_strerror(ev->error));
    if (ev->detail[0])
        printf(": %s", ev->detail);
    printf("\n");
    /* Nobody stands at an ATM: a PIN or password has to come from the
     * profile (or a secure store of the device). This example has none to
     * give, and a PIN is never guessed (cards and TPMs lock out). */
    if (ev->type == M2MVPN_EVENT_PIN_REQUIRED || ev->type == M2MVPN_EVENT_CREDENTIALS_REQUIRED)
        printf("note: put the secret in the profile or answer with m2mvpn_enter_pin()/"
               "m2mvpn_set_credentials()\n");
    fflush(stdout);
}

/* The log hook receives finished lines; secrets never appear in them. */
static void on_log(m2mvpn *h, int level, const char *subsystem, const char *msg, void *userdata)
{
    static const char *const names[] = { "error", "warning", "info", "debug" };
    (void)h;
    (void)userdata;
    fprintf(stderr, "[%s] %s: %s\n", level >= 0 && level <= 3 ? names[level] : "?", subsystem, msg);
}

/* Print what failed: the code's message and this handle's detail. */
static int report(m2mvpn *h, const char *call, int err)
{
    fprintf(stderr, "atm_always_on: %s: %s: %s\n", call, m2mvpn_strerror(err), m2mvpn_last_error(h));
    return 1;
}

static void print_status(m2mvpn *h)
{
    char *json = NULL;
    int r = m2mvpn_status_json(h, &json);
    if (r < 0) {
        report(h, "m2mvpn_status_json", r);
        return;
    }
    printf("status %s\n", json);
    fflush(stdout);
    m2mvpn_string_free(json);
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s PROFILE.json [STATUS_INTERVAL_S]\n", argv[0]);
        return 2;
    }
    long interval = argc == 3 ? strtol(argv[2], NULL, 10) : 5;
    if (interval < 1 || interval > 3600) {
        fprintf(stderr, "atm_always_on: STATUS_INTERVAL_S must be 1..3600\n");
        return 2;
    }

    /* Block SIGTERM and SIGINT before the library starts its thread: the
     * engine thread inherits the mask, so the signals are only ever taken by
     * sigtimedwait() below, in this thread. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    if (sigprocmask(SIG_BLOCK, &sigs, NULL) < 0) {
        perror("atm_always_on: sigprocmask");
        return 1;
    }

    printf("libm2mvpn %s\n", m2mvpn_version());

    m2mvpn_callbacks cbs = { .struct_size = sizeof(cbs), .on_event = on_event };
    m2mvpn *h = NULL;
    int r = m2mvpn_new(&cbs, NULL, &h);
    if (r < 0) {
        /* No handle, so no m2mvpn_last_error(): the code is all there is. */
        fprintf(stderr, "atm_always_on: m2mvpn_new: %s\n", m2mvpn_strerror(r));
        return 1;
    }

    int rc = 1;
    if ((r = m2mvpn_set_log(h, on_log, M2MVPN_LOG_INFO, NULL)) < 0) {
        report(h, "m2mvpn_set_log", r);
        goto out;
    }
    /* Parsed and validated right here; on error nothing was loaded and the
     * detail names the faulty key, e.g. "gateways[0].port: must be 1..65535". */
    if ((r = m2mvpn_profile_load_file(h, argv[1])) < 0) {
        report(h, "m2mvpn_profile_load_file", r);
        goto out;
    }
    if ((r = m2mvpn_start(h)) < 0) {
        report(h, "m2mvpn_start", r);
        goto out;
    }
    /* An always-on profile connects by itself once loaded and the engine
     * runs. The explicit call makes a "manual" profile work too, and makes a
     * build that cannot connect (M2MVPN_E_NOTSUPP) fail here, loudly. */
    if ((r = m2mvpn_connect(h)) < 0) {
        report(h, "m2mvpn_connect", r);
        goto out;
    }

    /* From here on the engine reconnects, fails over and rekeys by itself;
     * the application only watches. */
    for (;;) {
        print_status(h);
        struct timespec wait = { .tv_sec = interval, .tv_nsec = 0 };
        int sig = sigtimedwait(&sigs, NULL, &wait);
        if (sig == SIGTERM || sig == SIGINT) {
            printf("signal %d: shutting down\n", sig);
            break;
        }
        if (sig < 0 && errno != EAGAIN && errno != EINTR) {
            perror("atm_always_on: sigtimedwait");
            goto out;
        }
    }

    /* Orderly end: ask for the tunnel to go down (queued), then free, which
     * stops the engine thread and tears down what is left. */
    if ((r = m2mvpn_disconnect(h)) < 0)
        report(h, "m2mvpn_disconnect", r);
    print_status(h);
    rc = 0;
out:
    m2mvpn_free(h);
    return rc;
}
