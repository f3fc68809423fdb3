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
 * Run until SIGTERM/SIGINT or a "stop" request, then disconnect cleanly.
 * Start-up failures are one line on stderr ("m2mvpn: ...") and on ready_fd.
 * Returns the process exit status: 0 after a clean stop, 1 on failure.
 */
int service_run(const service_opts *opts);

#endif
