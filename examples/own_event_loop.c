/* SPDX-License-Identifier: Apache-2.0 */
/*
 * own_event_loop — the single-threaded firmware pattern.
 *
 * No thread is created: the application's own poll() loop drives the
 * library. The loop waits on the library's fd (m2mvpn_get_fd) next to its
 * own fds — here a signalfd for SIGTERM/SIGINT — for at most the time the
 * library asks for (m2mvpn_get_timeout_ms), then lets it work
 * (m2mvpn_process). Events and log lines are delivered from inside
 * m2mvpn_process(), on this very thread.
 *
 *   usage: own_event_loop PROFILE.json
 *
 * Exit status: 0 after SIGTERM/SIGINT, 1 on an error (reason on stderr),
 * 2 on a usage error.
 */
#define _POSIX_C_SOURCE 200809L

#include <m2mvpn/m2mvpn.h>

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#define STATUS_EVERY_MS 10000

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Called from inside m2mvpn_process(). Control calls are allowed here;
 * m2mvpn_process() and m2mvpn_free() are not. */
static void on_event(m2mvpn *h, const m2mvpn_event *ev, void *userdata)
{
    (void)h;
    (void)userdata;
    printf("event type=%d state=%d (was %d) error=%d%s%s\n", (int)ev->type, (int)ev->state,
           (int)ev->old_state, ev->error, ev->detail[0] ? ": " : "", ev->detail);
    fflush(stdout);
}

static void on_log(m2mvpn *h, int level, const char *subsystem, const char *msg, void *userdata)
{
    (void)h;
    (void)userdata;
    fprintf(stderr, "[%d] %s: %s\n", level, subsystem, msg);
}

static int report(m2mvpn *h, const char *call, int err)
{
    fprintf(stderr, "own_event_loop: %s: %s: %s\n", call, m2mvpn_strerror(err), m2mvpn_last_error(h));
    return 1;
}

/*
 * One round of the loop: wait for the library's fd, the caller's extra fd
 * (-1: none) or the earlier of the library's timer and `own_timeout_ms`.
 * Returns 1 when the extra fd is readable, 0 otherwise, or a negative
 * M2MVPN_E_* on a library failure.
 */
static int run_once(m2mvpn *h, int lib_fd, int extra_fd, int own_timeout_ms)
{
    /* -1 means "no timer"; anything below -1 is an M2MVPN_E_* code. */
    int tmo = m2mvpn_get_timeout_ms(h);
    if (tmo < -1) {
        report(h, "m2mvpn_get_timeout_ms", tmo);
        return tmo;
    }
    if (tmo < 0 || (own_timeout_ms >= 0 && own_timeout_ms < tmo))
        tmo = own_timeout_ms;

    struct pollfd pfd[2] = {
        { .fd = lib_fd, .events = POLLIN },
        { .fd = extra_fd, .events = POLLIN }, /* poll() ignores fd -1 */
    };
    if (poll(pfd, 2, tmo) < 0 && errno != EINTR) {
        perror("own_event_loop: poll");
        return M2MVPN_E_SYSTEM;
    }
    /* Always safe to call: it never blocks and does only what is due (queued
     * commands, ready I/O, expired timers, callbacks). */
    int r = m2mvpn_process(h);
    if (r < 0) {
        report(h, "m2mvpn_process", r);
        return r;
    }
    return (pfd[1].revents & POLLIN) ? 1 : 0;
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
    if (argc != 2) {
        fprintf(stderr, "usage: %s PROFILE.json\n", argv[0]);
        return 2;
    }

    /* Signals become readable events in our own loop. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    if (sigprocmask(SIG_BLOCK, &sigs, NULL) < 0) {
        perror("own_event_loop: sigprocmask");
        return 1;
    }
    int sig_fd = signalfd(-1, &sigs, SFD_CLOEXEC);
    if (sig_fd < 0) {
        perror("own_event_loop: signalfd");
        return 1;
    }

    m2mvpn_callbacks cbs = { .struct_size = sizeof(cbs), .on_event = on_event };
    m2mvpn *h = NULL;
    int r = m2mvpn_new(&cbs, NULL, &h);
    if (r < 0) {
        fprintf(stderr, "own_event_loop: m2mvpn_new: %s\n", m2mvpn_strerror(r));
        close(sig_fd);
        return 1;
    }

    int rc = 1, lib_fd = -1;
    if ((r = m2mvpn_set_log(h, on_log, M2MVPN_LOG_INFO, NULL)) < 0) {
        report(h, "m2mvpn_set_log", r);
        goto out;
    }
    if ((r = m2mvpn_profile_load_file(h, argv[1])) < 0) {
        report(h, "m2mvpn_profile_load_file", r);
        goto out;
    }
    /* Asking for the fd chooses this way of driving the engine for the life
     * of the handle: m2mvpn_start() returns M2MVPN_E_BUSY from now on. The fd
     * belongs to the library: poll it, never read or close it. */
    lib_fd = m2mvpn_get_fd(h);
    if (lib_fd < 0) {
        report(h, "m2mvpn_get_fd", lib_fd);
        goto out;
    }
    /* Queued: it runs inside a later m2mvpn_process(). */
    if ((r = m2mvpn_connect(h)) < 0) {
        report(h, "m2mvpn_connect", r);
        goto out;
    }

    uint64_t next_status = now_ms();
    for (;;) {
        uint64_t now = now_ms();
        if (now >= next_status) {
            print_status(h);
            next_status = now + STATUS_EVERY_MS;
        }
        r = run_once(h, lib_fd, sig_fd, (int)(next_status - now));
        if (r < 0)
            goto out;
        if (r == 1) {
            struct signalfd_siginfo si;
            if (read(sig_fd, &si, sizeof(si)) == (ssize_t)sizeof(si))
                printf("signal %u: shutting down\n", (unsigned)si.ssi_signo);
            break;
        }
    }

    /* Orderly end: queue the disconnect and keep driving the engine until the
     * tunnel is idle (or 5 s pass), so the gateway is told. */
    if ((r = m2mvpn_disconnect(h)) < 0) {
        report(h, "m2mvpn_disconnect", r);
        goto out;
    }
    for (uint64_t end = now_ms() + 5000; now_ms() < end;) {
        if (run_once(h, lib_fd, -1, 100) < 0)
            goto out;
        m2mvpn_status st = { .struct_size = sizeof(st) };
        if ((r = m2mvpn_get_status(h, &st)) < 0) {
            report(h, "m2mvpn_get_status", r);
            goto out;
        }
        if (st.state == M2MVPN_STATE_IDLE)
            break;
    }
    print_status(h);
    rc = 0;
out:
    m2mvpn_free(h);
    close(sig_fd);
    return rc;
}
