/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Where the service's log lines go: stderr (one line per write, the default;
 * a service manager or `m2mvpn start`'s log file takes them) or syslog(3)
 * (`--log syslog`: facility daemon, ident "m2mvpn", the line's level as
 * its priority). Lines never hold secrets: the library and the service only
 * log command words, names and reasons.
 */
#ifndef M2MVPN_TOOLS_SERVICE_LOG_H
#define M2MVPN_TOOLS_SERVICE_LOG_H

typedef enum svc_log_sink {
    SVC_LOG_STDERR,
    SVC_LOG_SYSLOG,
} svc_log_sink;

/** "stderr" / "syslog" into *sink; -1 for any other word. */
int svc_log_sink_parse(const char *word, svc_log_sink *sink);

/** The word of a sink ("stderr", "syslog"). */
const char *svc_log_sink_name(svc_log_sink sink);

/** Start logging to `sink` (opens the syslog connection at once, so a
 *  later chroot or a full /dev/log does not lose the first lines). */
void svc_log_open(svc_log_sink sink);

/** Close the syslog connection, if any; later lines go to stderr. */
void svc_log_close(void);

/** One finished line: level is an M2MVPN_LOG_* value, subsystem a short word. */
void svc_log_write(int level, const char *subsystem, const char *msg);

#endif
