/* SPDX-License-Identifier: Apache-2.0 */
/* The service loop: engine, control socket, signals. See service.h. */
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <malloc.h>
#include <m2mvpn/m2mvpn.h>
#include <openssl/crypto.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "control.h"
#include "service.h"
#include "service_fs.h"
#include "service_group.h"
#include "service_log.h"
#include "service_reload.h"

#define SVC_MAX_CONNS 8
#define SVC_CONN_TIMEOUT_MS 5000   /* a client has this long to send and read */
#define SVC_STOP_TIMEOUT_MS 10000  /* clean disconnect before exit, at most */
#define SVC_IN_SIZE (CTL_MAX_LINE + 2)

typedef struct svc_conn {
    int fd;                    /* -1: slot free */
    char *in;                  /* request line, SVC_IN_SIZE bytes while connected (only
                                  the clients of the moment cost memory); may hold a
                                  secret: wiped */
    size_t in_len;
    char *out;                 /* response line being written */
    size_t out_len, out_off;
    long long deadline_ms;
    bool draining;             /* answered: discard input until the client closes */
    uid_t uid;
    pid_t pid;
    svc_peer_role role;
} svc_conn;

typedef struct service {
    const service_opts *opts;
    m2mvpn *h;
    int engine_fd;
    int listen_fd;
    int signal_fd;
    svc_conn conns[SVC_MAX_CONNS];
    bool stopping;
    bool processed_since_stop;
    long long stop_deadline_ms;
    long long engine_deadline_ms; /* -1: no engine timer */
    gid_t group;                  /* control group, SVC_NO_GROUP: none */
    long long started_ms;         /* monotonic */
    time_t started_at;            /* wall clock, for status */
    svc_reload_state reload;
    bool trim_pending;            /* a state change happened: give back freed heap */
    /* the last "decommission" request: "" none, "pending", "done", "failed" */
    char decom_result[16];
    char decom_detail[512];
} service;

static const char *error_name(int code)
{
    switch (code) {
#define XX(name, value, msg) case M2MVPN_E_##name: return #name;
        M2MVPN_ERROR_MAP(XX)
#undef XX
    default:
        return "UNKNOWN";
    }
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------------ logs */

static void on_library_log(m2mvpn *h, int level, const char *subsystem, const char *msg, void *userdata)
{
    (void)h;
    (void)userdata;
    svc_log_write(level, subsystem, msg);
}

static void svc_log(const service *s, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void svc_log(const service *s, int level, const char *fmt, ...)
{
    if (level > (s->opts->verbose ? M2MVPN_LOG_DEBUG : M2MVPN_LOG_INFO))
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    svc_log_write(level, "service", msg);
}

static void on_event(m2mvpn *h, const m2mvpn_event *ev, void *userdata)
{
    (void)h;
    service *s = userdata;
    const char *detail = ev->detail && *ev->detail ? ev->detail : "";
    switch (ev->type) {
    case M2MVPN_EVENT_STATE_CHANGED:
        svc_log(s, M2MVPN_LOG_DEBUG, "event STATE_CHANGED %s -> %s%s%s", m2mvpn_state_name(ev->old_state),
                m2mvpn_state_name(ev->state), *detail ? ": " : "", detail);
        s->trim_pending = true;
        break;
    case M2MVPN_EVENT_PIN_REQUIRED:
        svc_log(s, M2MVPN_LOG_WARNING, "profile '%s' needs a PIN: answer with 'm2mvpn pin'", ev->profile);
        break;
    case M2MVPN_EVENT_CREDENTIALS_REQUIRED:
        svc_log(s, M2MVPN_LOG_WARNING, "profile '%s' needs a user name and password: answer with 'm2mvpn login --user USER'",
                ev->profile);
        break;
    case M2MVPN_EVENT_DECOMMISSIONED:
        snprintf(s->decom_result, sizeof(s->decom_result), "%s", ev->error ? "failed" : "done");
        snprintf(s->decom_detail, sizeof(s->decom_detail), "%s%s%s", ev->error ? error_name(ev->error) : "",
                 ev->error && *detail ? ": " : "", detail);
        svc_log(s, ev->error ? M2MVPN_LOG_WARNING : M2MVPN_LOG_INFO, "event DECOMMISSIONED%s%s", ev->error ? " " : "",
                s->decom_detail);
        break;
    default:
        svc_log(s, ev->error ? M2MVPN_LOG_WARNING : M2MVPN_LOG_INFO, "event %s%s%s%s%s", m2mvpn_event_name(ev->type),
                ev->error ? " " : "", ev->error ? error_name(ev->error) : "", *detail ? ": " : "", detail);
        break;
    }
}

/* ------------------------------------------------------------- start-up */

static void report_startup_failure(const service_opts *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void report_startup_failure(const service_opts *o, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fprintf(stderr, "m2mvpn: %s\n", msg);
    if (o->log_sink == SVC_LOG_SYSLOG)
        svc_log_write(M2MVPN_LOG_ERROR, "service", msg);
    if (o->ready_fd >= 0) {
        dprintf(o->ready_fd, "error %s\n", msg);
        close(o->ready_fd);
    }
}

/* ------------------------------------------------------------ responses */

static char *response_text(json_object *o)
{
    const char *txt = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
    size_t n = txt ? strlen(txt) : 0;
    char *line = txt ? malloc(n + 2) : NULL;
    if (line) {
        memcpy(line, txt, n);
        line[n] = '\n';
        line[n + 1] = '\0';
    }
    json_object_put(o);
    return line;
}

/* {"ok":false,"code":C,"error":"NAME","message":"..."}; code 0 for faults of
 * the protocol itself (NAME is then one of the protocol error names). */
static char *response_error(int code, const char *name, const char *message)
{
    json_object *o = json_object_new_object();
    if (!o)
        return NULL;
    json_object_object_add(o, "ok", json_object_new_boolean(0));
    json_object_object_add(o, "code", json_object_new_int(code));
    json_object_object_add(o, "error", json_object_new_string(name));
    json_object_object_add(o, "message", json_object_new_string(message));
    return response_text(o);
}

static char *response_library_error(service *s, int code)
{
    char detail[512];
    snprintf(detail, sizeof(detail), "%s", m2mvpn_last_error(s->h));
    return response_error(code, error_name(code), detail[0] ? detail : m2mvpn_strerror(code));
}

static char *response_ok(json_object *status)
{
    json_object *o = json_object_new_object();
    if (!o) {
        json_object_put(status);
        return NULL;
    }
    json_object_object_add(o, "ok", json_object_new_boolean(1));
    if (status)
        json_object_object_add(o, "status", status);
    return response_text(o);
}

/* ------------------------------------------------------------- requests */

static void begin_stop(service *s, const char *why)
{
    if (s->stopping)
        return;
    svc_log(s, M2MVPN_LOG_INFO, "stopping (%s): disconnecting", why);
    s->stopping = true;
    s->processed_since_stop = false;
    s->stop_deadline_ms = now_ms() + SVC_STOP_TIMEOUT_MS;
    /* No new clients from here on; `m2mvpn stop` waits for the pid file. */
    if (s->listen_fd >= 0) {
        close(s->listen_fd);
        s->listen_fd = -1;
        unlink(s->opts->control);
    }
    int r = m2mvpn_disconnect(s->h);
    if (r < 0)
        svc_log(s, M2MVPN_LOG_WARNING, "disconnect refused: %s", m2mvpn_last_error(s->h));
}

/* The "service" member of `status`: what the library cannot know. */
static json_object *service_status(const service *s)
{
    json_object *o = json_object_new_object();
    if (!o)
        return NULL;
    json_object_object_add(o, "pid", json_object_new_int64((int64_t)getpid()));
    json_object_object_add(o, "started_at", json_object_new_int64((int64_t)s->started_at));
    json_object_object_add(o, "uptime_s", json_object_new_int64((now_ms() - s->started_ms) / 1000));
    json_object_object_add(o, "profile_file", json_object_new_string(s->opts->profile));
    json_object_object_add(o, "log", json_object_new_string(svc_log_sink_name(s->opts->log_sink)));
    json_object_object_add(o, "control_group",
                           s->opts->control_group ? json_object_new_string(s->opts->control_group) : NULL);
    json_object_object_add(o, "reload", svc_reload_json(&s->reload));
    if (s->decom_result[0]) {
        json_object *d = json_object_new_object();
        if (d) {
            json_object_object_add(d, "result", json_object_new_string(s->decom_result));
            json_object_object_add(d, "detail", json_object_new_string(s->decom_detail));
            json_object_object_add(o, "decommission", d);
        }
    }
    return o;
}

static char *run_request(service *s, ctl_request *req)
{
    int r = 0;
    switch (req->cmd) {
    case CTL_CMD_STATUS: {
        char *txt = NULL;
        r = m2mvpn_status_json(s->h, &txt);
        if (r < 0)
            return response_library_error(s, r);
        json_object *status = json_tokener_parse(txt);
        m2mvpn_string_free(txt);
        if (!status)
            return response_error(0, "INTERNAL", "the library's status is not valid JSON");
        json_object_object_add(status, "service", service_status(s));
        return response_ok(status);
    }
    case CTL_CMD_CONNECT:
        if (req->argc == 1 && (r = m2mvpn_profile_switch(s->h, req->args[0])) < 0)
            return response_library_error(s, r);
        r = m2mvpn_connect(s->h);
        break;
    case CTL_CMD_DISCONNECT:
        r = m2mvpn_disconnect(s->h);
        break;
    case CTL_CMD_SWITCH:
        r = m2mvpn_profile_switch(s->h, req->args[0]);
        break;
    case CTL_CMD_LOGIN:
        r = m2mvpn_set_credentials(s->h, req->args[0], req->args[1]);
        break;
    case CTL_CMD_PIN:
        r = m2mvpn_enter_pin(s->h, req->args[0], req->arg_len[0]);
        break;
    case CTL_CMD_UNLOAD:
        r = m2mvpn_profile_unload(s->h, req->args[0]);
        break;
    case CTL_CMD_STOP:
        begin_stop(s, "stop request");
        break;
    case CTL_CMD_DECOMMISSION:
        r = m2mvpn_decommission(s->h);
        if (r == 0) {
            snprintf(s->decom_result, sizeof(s->decom_result), "pending");
            s->decom_detail[0] = '\0';
        }
        break;
    case CTL_CMD_COUNT_:
        return response_error(0, "BAD_REQUEST", "unknown command");
    }
    return r < 0 ? response_library_error(s, r) : response_ok(NULL);
}

/* ---------------------------------------------------------- connections */

static void conn_close(svc_conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    if (c->in)
        explicit_bzero(c->in, SVC_IN_SIZE);
    free(c->in);
    c->in = NULL;
    free(c->out);
    c->fd = -1;
    c->in_len = 0;
    c->draining = false;
    c->out = NULL;
    c->out_len = c->out_off = 0;
}

/* Queue the response line (takes it); NULL (out of memory) closes at once. */
static void conn_respond(svc_conn *c, char *line)
{
    explicit_bzero(c->in, SVC_IN_SIZE);
    c->in_len = 0;
    if (!line) {
        conn_close(c);
        return;
    }
    c->out = line;
    c->out_len = strlen(line);
    c->out_off = 0;
}

static void conn_handle_line(service *s, svc_conn *c, size_t len)
{
    if (len > 0 && c->in[len - 1] == '\r')
        len--; /* lenient with `socat` and friends */
    ctl_request *req = malloc(sizeof(*req));
    if (!req) {
        conn_respond(c, response_error(0, "INTERNAL", "out of memory"));
        return;
    }
    char err[256];
    char *resp;
    if (ctl_request_parse(c->in, len, req, err, sizeof(err)) < 0) {
        svc_log(s, M2MVPN_LOG_DEBUG, "control: bad request from uid %ld pid %ld: %s", (long)c->uid, (long)c->pid, err);
        resp = response_error(0, "BAD_REQUEST", err);
    } else {
        /* Only the command word: arguments may be a password or a PIN. */
        svc_log(s, M2MVPN_LOG_DEBUG, "control: '%s' from uid %ld pid %ld", ctl_cmd_name(req->cmd), (long)c->uid,
                (long)c->pid);
        if (svc_role_may(c->role, req->cmd)) {
            resp = run_request(s, req);
        } else {
            svc_log(s, M2MVPN_LOG_WARNING, "control: refused '%s' from operator uid %ld pid %ld",
                    ctl_cmd_name(req->cmd), (long)c->uid, (long)c->pid);
            char msg[160];
            snprintf(msg, sizeof(msg), "'%s' is reserved to root and the service's own user", ctl_cmd_name(req->cmd));
            resp = response_error(0, "PERMISSION_DENIED", msg);
        }
    }
    ctl_request_wipe(req);
    free(req);
    conn_respond(c, resp);
}

static void conn_readable(service *s, svc_conn *c)
{
    size_t room = SVC_IN_SIZE - 1 - c->in_len;
    ssize_t n = recv(c->fd, c->in + c->in_len, room, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n < 0) {
        conn_close(c);
        return;
    }
    if (n == 0) { /* EOF: a last line without "\n" still counts */
        if (c->in_len == 0)
            conn_close(c);
        else
            conn_handle_line(s, c, c->in_len);
        return;
    }
    size_t old = c->in_len;
    c->in_len += (size_t)n;
    char *nl = memchr(c->in + old, '\n', (size_t)n);
    if (nl) {
        conn_handle_line(s, c, (size_t)(nl - c->in));
    } else if (c->in_len > CTL_MAX_LINE) {
        char msg[64];
        snprintf(msg, sizeof(msg), "request longer than %d bytes", CTL_MAX_LINE);
        conn_respond(c, response_error(0, "BAD_REQUEST", msg));
    }
}

static void conn_writable(svc_conn *c)
{
    ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n < 0) {
        conn_close(c);
        return;
    }
    c->out_off += (size_t)n;
    if (c->out_off < c->out_len)
        return;
    /* Answer sent. Closing now, with unread request bytes still queued (an
     * over-long line), would reset the connection and could destroy the
     * answer before the client read it: end our side and drain instead. */
    free(c->out);
    c->out = NULL;
    c->out_len = c->out_off = 0;
    shutdown(c->fd, SHUT_WR);
    c->draining = true;
}

static void conn_drain(svc_conn *c)
{
    char sink[4096];
    ssize_t n = recv(c->fd, sink, sizeof(sink), MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
        conn_close(c);
}

static void accept_clients(service *s)
{
    for (;;) {
        int fd = accept4(s->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return; /* EAGAIN, or a transient error: poll tells us again */
        svc_conn *c = NULL;
        for (size_t i = 0; i < SVC_MAX_CONNS && !c; i++)
            if (s->conns[i].fd < 0)
                c = &s->conns[i];
        uid_t uid = (uid_t)-1;
        pid_t pid = 0;
        svc_peer_role role = svc_peer_role_of(fd, s->group, &uid, &pid);
        int allowed = role != SVC_PEER_REFUSED;
        if (!c || allowed != 1) {
            /* Best effort, one short line: the socket buffer takes it. */
            char *line = !c ? response_error(0, "BUSY", "too many clients at once, try again")
                            : response_error(0, "PERMISSION_DENIED", s->group == SVC_NO_GROUP
                                  ? "only root or the service's own user may use it"
                                  : "only root, the service's own user or its control group may use it");
            if (line) {
                ssize_t w = send(fd, line, strlen(line), MSG_DONTWAIT | MSG_NOSIGNAL);
                (void)w;
                free(line);
            }
            if (allowed != 1)
                svc_log(s, M2MVPN_LOG_WARNING, "control: refused a client with uid %ld pid %ld", (long)uid, (long)pid);
            else
                svc_log(s, M2MVPN_LOG_DEBUG, "control: busy, turned away pid %ld", (long)pid);
            close(fd);
            continue;
        }
        if (!(c->in = malloc(SVC_IN_SIZE))) {
            svc_log(s, M2MVPN_LOG_WARNING, "control: out of memory, turned away pid %ld", (long)pid);
            close(fd);
            continue;
        }
        c->fd = fd;
        c->uid = uid;
        c->pid = pid;
        c->role = role;
        c->in_len = 0;
        c->deadline_ms = now_ms() + SVC_CONN_TIMEOUT_MS;
    }
}

/* ----------------------------------------------------------------- loop */

static void handle_signals(service *s)
{
    struct signalfd_siginfo si;
    while (read(s->signal_fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        if (si.ssi_signo == SIGHUP) {
            if (!s->stopping)
                svc_reload(s->h, s->opts->profile, &s->reload);
            continue;
        }
        begin_stop(s, si.ssi_signo == SIGTERM ? "SIGTERM" : "SIGINT");
    }
}

static void run_engine(service *s)
{
    int r = m2mvpn_process(s->h);
    if (r < 0)
        svc_log(s, M2MVPN_LOG_ERROR, "engine: %s", m2mvpn_last_error(s->h));
    if (s->stopping)
        s->processed_since_stop = true;
    if (s->trim_pending) {
        /* After a connect or reconnect the heap holds what the exchanges
         * freed (certificates, key exchange, messages): hand it back, so an
         * idle device does not carry the attempt's peak (bench/footprint). */
        s->trim_pending = false;
        malloc_trim(0);
    }
    int t = m2mvpn_get_timeout_ms(s->h);
    s->engine_deadline_ms = t < 0 ? -1 : now_ms() + t;
}

/* Answers not yet completely sent (draining connections have theirs out). */
static bool pending_output(const service *s)
{
    for (size_t i = 0; i < SVC_MAX_CONNS; i++)
        if (s->conns[i].fd >= 0 && s->conns[i].out)
            return true;
    return false;
}

static bool stop_done(service *s)
{
    if (!s->stopping)
        return false;
    if (now_ms() >= s->stop_deadline_ms) {
        svc_log(s, M2MVPN_LOG_WARNING, "tunnel did not go down within %d ms: leaving anyway", SVC_STOP_TIMEOUT_MS);
        return true;
    }
    if (!s->processed_since_stop || pending_output(s))
        return false;
    m2mvpn_status st = { .struct_size = sizeof(st) };
    return m2mvpn_get_status(s->h, &st) == 0 && st.state == M2MVPN_STATE_IDLE;
}

static __attribute__((noinline)) int serve(service *s)
{
    struct pollfd pfd[3 + SVC_MAX_CONNS];
    svc_conn *owner[3 + SVC_MAX_CONNS];
    run_engine(s);
    while (!stop_done(s)) {
        size_t n = 0;
        pfd[n++] = (struct pollfd){ .fd = s->engine_fd, .events = POLLIN };
        pfd[n++] = (struct pollfd){ .fd = s->signal_fd, .events = POLLIN };
        pfd[n++] = (struct pollfd){ .fd = s->listen_fd, .events = POLLIN }; /* -1 is ignored */
        long long now = now_ms();
        long long wake = s->engine_deadline_ms;
        if (s->stopping && (wake < 0 || s->stop_deadline_ms < wake))
            wake = s->stop_deadline_ms;
        for (size_t i = 0; i < SVC_MAX_CONNS; i++) {
            svc_conn *c = &s->conns[i];
            if (c->fd < 0)
                continue;
            if (now >= c->deadline_ms) {
                svc_log(s, M2MVPN_LOG_DEBUG, "control: client pid %ld timed out", (long)c->pid);
                conn_close(c);
                continue;
            }
            if (wake < 0 || c->deadline_ms < wake)
                wake = c->deadline_ms;
            owner[n] = c;
            pfd[n++] = (struct pollfd){ .fd = c->fd, .events = c->out ? POLLOUT : POLLIN };
        }
        int timeout = wake < 0 ? -1 : (wake <= now ? 0 : (int)(wake - now));
        int r = poll(pfd, n, timeout);
        if (r < 0 && errno != EINTR) {
            svc_log(s, M2MVPN_LOG_ERROR, "poll: %s", strerror(errno));
            return 1;
        }
        if (r > 0 && (pfd[1].revents & POLLIN))
            handle_signals(s);
        if (r > 0 && s->listen_fd >= 0 && (pfd[2].revents & POLLIN))
            accept_clients(s);
        for (size_t i = 3; r > 0 && i < n; i++) {
            svc_conn *c = owner[i];
            if (c->fd != pfd[i].fd || !pfd[i].revents)
                continue;
            if (c->out)
                conn_writable(c);
            else if (c->draining)
                conn_drain(c);
            else
                conn_readable(s, c);
        }
        /* Requests may have queued commands: the engine fd shows them next
         * round; timers are due when their deadline passed. */
        if ((r > 0 && (pfd[0].revents & POLLIN)) ||
            (s->engine_deadline_ms >= 0 && now_ms() >= s->engine_deadline_ms) ||
            (s->stopping && !s->processed_since_stop))
            run_engine(s);
    }
    return 0;
}

static int block_signals(service *s)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    if (sigprocmask(SIG_BLOCK, &set, NULL) < 0)
        return -1;
    signal(SIGPIPE, SIG_IGN);
    s->signal_fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    return s->signal_fd < 0 ? -1 : 0;
}

/* Start-up, in a frame of its own: its buffers are off the stack while the
 * service runs (every page the engine's deepest call reaches below them
 * stays resident; bench/footprint). */
static __attribute__((noinline)) int start(service *s, const service_opts *o, bool *pidfile)
{
    char err[1024], sock_dir[4096];
    int r;

    m2mvpn_callbacks cbs = { .struct_size = sizeof(cbs), .on_event = on_event };
    r = m2mvpn_new(&cbs, s, &s->h);
    if (r < 0) {
        report_startup_failure(o, "cannot create the VPN client: %s", m2mvpn_strerror(r));
        return -1;
    }
    m2mvpn_set_log(s->h, on_library_log, o->verbose ? M2MVPN_LOG_DEBUG : M2MVPN_LOG_INFO, NULL);

    if (block_signals(s) < 0) {
        report_startup_failure(o, "cannot set up signal handling: %s", strerror(errno));
        return -1;
    }
    if (svc_dirname(o->control, sock_dir, sizeof(sock_dir)) < 0) {
        report_startup_failure(o, "control socket path is too long");
        return -1;
    }
    if (svc_prepare_dir(o->state_dir, err, sizeof(err)) < 0 ||
        svc_prepare_dir(sock_dir, err, sizeof(err)) < 0) {
        report_startup_failure(o, "%s", err);
        return -1;
    }
    if (o->control_group) {
        bool opened = false;
        if (svc_group_lookup(o->control_group, &s->group, err, sizeof(err)) < 0 ||
            svc_dir_open_to_group(sock_dir, s->group, &opened, err, sizeof(err)) < 0) {
            report_startup_failure(o, "%s", err);
            return -1;
        }
        if (opened)
            svc_log(s, M2MVPN_LOG_INFO, "folder %s opened to group %s (search only)", sock_dir, o->control_group);
    }
    /* Management keeps the device's key, certificate and profile here. */
    r = m2mvpn_set_state_dir(s->h, o->state_dir);
    if (r < 0) {
        report_startup_failure(o, "state directory %s: %s", o->state_dir, m2mvpn_last_error(s->h));
        return -1;
    }
    r = m2mvpn_profile_load_file(s->h, o->profile);
    if (r < 0) {
        report_startup_failure(o, "cannot load profile %s: %s", o->profile, m2mvpn_last_error(s->h));
        return -1;
    }
    s->listen_fd = svc_bind(o->control, s->group, err, sizeof(err));
    if (s->listen_fd < 0) {
        report_startup_failure(o, "%s", err);
        return -1;
    }
    if (svc_pidfile_write(o->state_dir, err, sizeof(err)) < 0) {
        report_startup_failure(o, "%s", err);
        return -1;
    }
    *pidfile = true;
    /* The loaded profile takes effect (its kill switch is in place) before
     * the service answers: "ready" means protected. */
    if ((r = m2mvpn_process(s->h)) < 0) {
        report_startup_failure(o, "cannot start the engine: %s", m2mvpn_last_error(s->h));
        return -1;
    }
    if (svc_bind_publish(o->control, err, sizeof(err)) < 0) {
        report_startup_failure(o, "%s", err);
        return -1;
    }
    return 0;
}

/* Set for the one execution of service_tune_malloc(), so it knows the
 * tunable is its own (and takes it out again) rather than the user's. */
#define SVC_TUNED_ENV "M2MVPN_MALLOC_TUNED"

void service_tune_malloc(char **argv)
{
    if (getenv(SVC_TUNED_ENV)) {
        unsetenv(SVC_TUNED_ENV);
        unsetenv("GLIBC_TUNABLES");
        return;
    }
    /* Under valgrind, /proc/self/exe is valgrind's tool (and its malloc
     * replaces glibc's anyway). */
    const char *preload = getenv("LD_PRELOAD");
    if (getenv("GLIBC_TUNABLES") || !argv || !argv[0] || (preload && strstr(preload, "vgpreload")))
        return;
    /* Opened, not executed by name: the very file running now (not one put
     * in its place since), also under qemu-user, which opens the emulated
     * program for it. */
    int fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    if (fd >= 0 && setenv("GLIBC_TUNABLES", "glibc.malloc.tcache_count=0", 1) == 0 &&
        setenv(SVC_TUNED_ENV, "1", 1) == 0) {
        extern char **environ;
        fexecve(fd, argv, environ);
    }
    /* No /proc, or exec refused: carry on untuned. */
    if (fd >= 0)
        close(fd);
    unsetenv(SVC_TUNED_ENV);
    unsetenv("GLIBC_TUNABLES");
}

int service_run(const service_opts *o)
{
    /* The service never shows OpenSSL's own error texts except inside the
     * library's messages, where the numeric code stands in for them (decoded
     * by `openssl errstr`): not loading the tables keeps ~60 KiB of heap
     * (850 small blocks) off every idle device (bench/footprint). Must come
     * before any other OpenSSL call: the first use of the error queue would
     * load them. */
    OPENSSL_init_crypto(OPENSSL_INIT_NO_LOAD_CRYPTO_STRINGS, NULL);
    service *s = calloc(1, sizeof(*s));
    if (!s) {
        report_startup_failure(o, "out of memory");
        return 1;
    }
    s->opts = o;
    s->listen_fd = s->signal_fd = -1;
    s->group = SVC_NO_GROUP;
    s->started_ms = now_ms();
    s->started_at = time(NULL);
    svc_log_open(o->log_sink);
    for (size_t i = 0; i < SVC_MAX_CONNS; i++)
        s->conns[i].fd = -1;
    int status = 1;
    bool pidfile = false;
    if (start(s, o, &pidfile) < 0)
        goto out;
    s->engine_fd = m2mvpn_get_fd(s->h);
    if (s->engine_fd < 0) {
        report_startup_failure(o, "cannot drive the engine: %s", m2mvpn_last_error(s->h));
        goto out;
    }
    svc_log(s, M2MVPN_LOG_INFO, "m2mvpn %s serving %s on %s%s%s (pid %ld)", m2mvpn_version(), o->profile, o->control,
            o->control_group ? " for group " : "", o->control_group ? o->control_group : "", (long)getpid());
    if (o->ready_fd >= 0) {
        dprintf(o->ready_fd, "ready\n");
        close(o->ready_fd);
    }
    status = serve(s);
    if (status == 0)
        svc_log(s, M2MVPN_LOG_INFO, "stopped");

out:
    for (size_t i = 0; i < SVC_MAX_CONNS; i++)
        conn_close(&s->conns[i]);
    if (s->listen_fd >= 0) {
        close(s->listen_fd);
        unlink(o->control);
    }
    if (s->signal_fd >= 0)
        close(s->signal_fd);
    m2mvpn_free(s->h);
    svc_log_close();
    /* Last: `m2mvpn stop` treats the pid file's removal as "gone". */
    if (pidfile)
        svc_pidfile_remove(o->state_dir);
    free(s);
    return status;
}
