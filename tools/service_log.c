/* SPDX-License-Identifier: Apache-2.0 */
/* The service's log sinks: see service_log.h. */
#include <m2mvpn/m2mvpn.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

#include "service_log.h"

/* The one process-wide choice: syslog(3) itself is process-wide state. */
static svc_log_sink current = SVC_LOG_STDERR;

static const char *const level_names[] = {
    [M2MVPN_LOG_ERROR] = "error",
    [M2MVPN_LOG_WARNING] = "warning",
    [M2MVPN_LOG_INFO] = "info",
    [M2MVPN_LOG_DEBUG] = "debug",
};

static const int level_priorities[] = {
    [M2MVPN_LOG_ERROR] = LOG_ERR,
    [M2MVPN_LOG_WARNING] = LOG_WARNING,
    [M2MVPN_LOG_INFO] = LOG_INFO,
    [M2MVPN_LOG_DEBUG] = LOG_DEBUG,
};

#define LEVEL_OK(v) ((unsigned)(v) < sizeof(level_names) / sizeof(level_names[0]))

int svc_log_sink_parse(const char *word, svc_log_sink *sink)
{
    if (!strcmp(word, "stderr"))
        *sink = SVC_LOG_STDERR;
    else if (!strcmp(word, "syslog"))
        *sink = SVC_LOG_SYSLOG;
    else
        return -1;
    return 0;
}

const char *svc_log_sink_name(svc_log_sink sink)
{
    return sink == SVC_LOG_SYSLOG ? "syslog" : "stderr";
}

void svc_log_open(svc_log_sink sink)
{
    current = sink;
    if (sink == SVC_LOG_SYSLOG)
        openlog("m2mvpn", LOG_PID | LOG_NDELAY, LOG_DAEMON);
}

void svc_log_close(void)
{
    if (current == SVC_LOG_SYSLOG)
        closelog();
    current = SVC_LOG_STDERR;
}

void svc_log_write(int level, const char *subsystem, const char *msg)
{
    if (current == SVC_LOG_SYSLOG) {
        /* "%s": the message is data, never a format. */
        syslog(LEVEL_OK(level) ? level_priorities[level] : LOG_NOTICE, "[%s] %s", subsystem, msg);
        return;
    }
    /* One line per write(), so lines from the library and ours never interleave. */
    char line[2048];
    int n = snprintf(line, sizeof(line), "%s [%s] %s\n", LEVEL_OK(level) ? level_names[level] : "unknown",
                     subsystem, msg);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof(line)) {
        n = sizeof(line) - 1;
        line[n - 1] = '\n';
    }
    ssize_t w = write(STDERR_FILENO, line, (size_t)n);
    (void)w; /* nowhere left to report a failed log write */
}
