/* SPDX-License-Identifier: Apache-2.0 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "control.h"
#include "ctl_client.h"

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Connected socket or -errno. */
static int connect_unix(const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof(sa.sun_path))
        return -ENAMETOOLONG;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

int ctl_client_reachable(const char *sock_path)
{
    int fd = connect_unix(sock_path);
    if (fd < 0)
        return 0;
    close(fd);
    return 1;
}

/* Wait for `events` on fd until deadline; 0 ready, -1 timed out/failed. */
static int wait_fd(int fd, short events, long long deadline)
{
    for (;;) {
        long long left = deadline - now_ms();
        if (left <= 0)
            return -1;
        struct pollfd p = { .fd = fd, .events = events };
        int r = poll(&p, 1, (int)left);
        if (r > 0)
            return 0;
        if (r < 0 && errno != EINTR)
            return -1;
    }
}

/* Is the process that listens on fd our service? Only root or our own user
 * may be: anyone else who got to bind the path first would receive our
 * passwords and PINs. 0 if so, -1 with err set if not. */
static int check_service_peer(int fd, const char *sock_path, char *err, size_t err_len)
{
    struct ucred cred;
    socklen_t len = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 || len != sizeof(cred)) {
        snprintf(err, err_len, "cannot tell who serves %s: %s", sock_path, strerror(errno));
        return -1;
    }
    if (cred.uid != 0 && cred.uid != geteuid()) {
        snprintf(err, err_len, "the service at %s runs as uid %u, neither root nor our uid %u: "
                 "not talking to it", sock_path, (unsigned)cred.uid, (unsigned)geteuid());
        return -1;
    }
    return 0;
}

int ctl_client_call(const char *sock_path, const char *line, size_t len, int timeout_ms,
                    char **resp, char *err, size_t err_len)
{
    int fd = connect_unix(sock_path);
    if (fd < 0) {
        snprintf(err, err_len, "cannot reach the service at %s: %s", sock_path, strerror(-fd));
        return -1;
    }
    if (check_service_peer(fd, sock_path, err, err_len) < 0) {
        close(fd);
        return -1;
    }
    long long deadline = now_ms() + timeout_ms;
    size_t sent = 0;
    while (sent < len) {
        if (wait_fd(fd, POLLOUT, deadline) < 0) {
            snprintf(err, err_len, "the service at %s did not take the request in time", sock_path);
            close(fd);
            return -1;
        }
        ssize_t n = send(fd, line + sent, len - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n < 0 && (errno == EPIPE || errno == ECONNRESET))
            break; /* it answered early (busy, refused): read why */
        if (n < 0) {
            snprintf(err, err_len, "cannot send to the service at %s: %s", sock_path, strerror(errno));
            close(fd);
            return -1;
        }
        sent += (size_t)n;
    }
    size_t cap = 1024, got = 0;
    char *buf = malloc(cap);
    if (!buf) {
        snprintf(err, err_len, "out of memory");
        close(fd);
        return -1;
    }
    for (;;) {
        if (got > 0 && buf[got - 1] == '\n')
            break;
        if (wait_fd(fd, POLLIN, deadline) < 0) {
            snprintf(err, err_len, "the service at %s did not answer in time", sock_path);
            goto fail;
        }
        if (got == cap) {
            if (cap >= CTL_MAX_RESPONSE) {
                snprintf(err, err_len, "the service at %s sent an over-long answer", sock_path);
                goto fail;
            }
            char *grown = realloc(buf, cap * 2);
            if (!grown) {
                snprintf(err, err_len, "out of memory");
                goto fail;
            }
            buf = grown;
            cap *= 2;
        }
        ssize_t n = recv(fd, buf + got, cap - got, MSG_DONTWAIT);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n < 0) {
            snprintf(err, err_len, "cannot read from the service at %s: %s", sock_path, strerror(errno));
            goto fail;
        }
        if (n == 0) {
            snprintf(err, err_len, "the service at %s closed the connection without an answer", sock_path);
            goto fail;
        }
        got += (size_t)n;
    }
    close(fd);
    buf[got - 1] = '\0';
    *resp = buf;
    return 0;
fail:
    free(buf);
    close(fd);
    return -1;
}
