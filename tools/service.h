/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The service: `m2mvpn run` and `m2mvpnd`. It owns one library handle and
 * drives its engine from its own poll loop (m2mvpn_get_fd /
 * m2mvpn_get_timeout_ms / m2mvpn_process), next to the control socket and a
 * signalfd for SIGTERM/SIGINT (stop) and SIGHUP (reload the profile file,
 * service_reload.h). Logs go to stderr, one line each, or to syslog
 * (service_log.h).
 */
#ifndef M2MVPN_TOOLS_SERVICE_H
#define M2MVPN_TOOLS_SERVICE_H

#include "service_log.h"

typedef struct service_opts {
    const char *profile;   /* profile file (required) */
    const char *control;   /* control socket path */
    const char *state_dir; /* holds m2mvpn.pid */
    int verbose;           /* 1: debug logging */
    svc_log_sink log_sink; /* stderr (default) or syslog */
    const char *control_group; /* NULL, or the operator group (service_group.h) */
    int ready_fd;          /* -1, or a pipe: "ready\n" once serving, or
                              "error <one line>\n" if start-up failed */
} service_opts;

/**
 * Called first by `m2mvpn run`, `m2mvpn start` and `m2mvpnd` with main()'s
 * argv: turns glibc's per-thread cache of freed blocks (tcache) off for this
 * daemon, which can only be done when the process starts (GLIBC_TUNABLES), so
 * it executes itself again once with the setting; the variable is then taken
 * out of the environment again, so what the service starts does not inherit
 * it. Left alone when GLIBC_TUNABLES is already set (the user's own choice),
 * under valgrind, and when the new execution fails (the process just goes on
 * as it is).
 * Why: the cache keeps up to 7 freed blocks of every small size per thread,
 * outside the heap's free lists, so malloc_trim() cannot give their pages
 * back; on an idle connected client that is ~30 KiB of private memory
 * (bench/footprint). The engine allocates nothing per packet, so nothing
 * is slower without it.
 */
void service_tune_malloc(char **argv);

/**
 * Run until SIGTERM/SIGINT or a "stop" request, then disconnect cleanly.
 * Start-up failures are one line on stderr ("m2mvpn: ...") and on ready_fd.
 * Returns the process exit status: 0 after a clean stop, 1 on failure.
 */
int service_run(const service_opts *opts);

#endif
