/* SPDX-License-Identifier: Apache-2.0 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "ctl_client.h"
#include "service_fs.h"

int svc_dirname(const char *path, char *out, size_t cap)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return snprintf(out, cap, ".") < (int)cap ? 0 : -1;
    size_t n = (size_t)(slash - path);
    if (n == 0)
        n = 1; /* "/x" lives in "/" */
    if (n >= cap)
        return -1;
    memcpy(out, path, n);
    out[n] = '\0';
    return 0;
}

/* Can someone other than root and us change what `path` (a folder on the
 * way to ours, resolved: no symbolic links) holds? Its owner, or its group
 * and others without the sticky bit (with it, they cannot rename or remove
 * what is ours in it). */
static int check_parent(const char *path, const char *dir, char *err, size_t err_len)
{
    struct stat st;
    if (lstat(path, &st) < 0) {
        snprintf(err, err_len, "cannot inspect folder %s: %s", path, strerror(errno));
        return -1;
    }
    if (st.st_uid != 0 && st.st_uid != geteuid()) {
        snprintf(err, err_len, "folder %s (on the way to %s) belongs to another user (uid %u): "
                 "refusing to put the service's files there", path, dir, (unsigned)st.st_uid);
        return -1;
    }
    if ((st.st_mode & (S_IWGRP | S_IWOTH)) && !(st.st_mode & S_ISVTX)) {
        snprintf(err, err_len, "folder %s (on the way to %s) is writable by other users: "
                 "refusing to put the service's files there", path, dir);
        return -1;
    }
    return 0;
}

/* Every folder from / down to the parent of `dir`, resolved. */
static int check_parents(const char *dir, char *err, size_t err_len)
{
    char parent[PATH_MAX], real[PATH_MAX];
    errno = 0;
    if (svc_dirname(dir, parent, sizeof(parent)) < 0 || !realpath(parent, real)) {
        snprintf(err, err_len, "cannot resolve the folder above %s: %s", dir,
                 errno ? strerror(errno) : "too long");
        return -1;
    }
    if (check_parent("/", dir, err, err_len) < 0)
        return -1;
    for (char *p = real + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        int rc = check_parent(real, dir, err, err_len);
        *p = '/';
        if (rc < 0)
            return -1;
    }
    return strcmp(real, "/") == 0 ? 0 : check_parent(real, dir, err, err_len);
}

int svc_prepare_dir(const char *dir, char *err, size_t err_len)
{
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        snprintf(err, err_len, "cannot create folder %s: %s", dir, strerror(errno));
        return -1;
    }
    /* The folder itself, not what a symbolic link of that name points to:
     * whoever could make the link chose where our files go. */
    struct stat st;
    if (lstat(dir, &st) < 0) {
        snprintf(err, err_len, "cannot inspect folder %s: %s", dir, strerror(errno));
        return -1;
    }
    if (S_ISLNK(st.st_mode)) {
        snprintf(err, err_len, "folder %s is a symbolic link: refusing to put the service's files "
                 "there", dir);
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        snprintf(err, err_len, "%s exists and is not a folder", dir);
        return -1;
    }
    /* Not even with the sticky bit: others could still create the socket's
     * or pid file's name before us, or a name a client then trusts. */
    if (st.st_mode & (S_IWGRP | S_IWOTH)) {
        snprintf(err, err_len, "folder %s is writable by other users: refusing to put the service's files there", dir);
        return -1;
    }
    if (st.st_uid != 0 && st.st_uid != geteuid()) {
        snprintf(err, err_len, "folder %s belongs to another user (uid %u): refusing to put the service's "
                 "files there", dir, (unsigned)st.st_uid);
        return -1;
    }
    /* And the way to it: whoever may rename a folder above could put
     * another in its place. */
    return check_parents(dir, err, err_len);
}

/* The socket is made under a temporary name, listening, and published under
 * its own name when the service is ready (svc_bind_publish): a client that
 * finds the name is never refused, and finds the pid file written. */
static const char tmp_suffix[] = ".new";

int svc_bind(const char *path, gid_t group, char *err, size_t err_len)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(path) + sizeof(tmp_suffix) > sizeof(sa.sun_path)) {
        snprintf(err, err_len, "control socket path %s is longer than %zu bytes", path,
                 sizeof(sa.sun_path) - sizeof(tmp_suffix));
        return -1;
    }
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s%s", path, tmp_suffix);
    const char *tmp = sa.sun_path;

    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            snprintf(err, err_len, "%s exists and is not a socket", path);
            return -1;
        }
        if (ctl_client_reachable(path)) {
            snprintf(err, err_len, "another service already answers at %s", path);
            return -1;
        }
        unlink(path); /* stale: its service is gone */
    }
    unlink(tmp); /* left by a service that died while starting */

    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, err_len, "cannot create the control socket: %s", strerror(errno));
        return -1;
    }
    /* umask closes the window between bind() and chmod() in which the socket
     * would have the default mode. */
    mode_t old = umask(0177);
    int r = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
    int e = errno;
    umask(old);
    if (r < 0) {
        snprintf(err, err_len, "cannot bind the control socket %s: %s", tmp, strerror(e));
        close(fd);
        return -1;
    }
    const char *step = NULL;
    /* With a control group: its members may connect (0660, that group). */
    if (group != (gid_t)-1 && chown(tmp, (uid_t)-1, group) < 0)
        step = "give the control group";
    else if (chmod(tmp, group != (gid_t)-1 ? 0660 : 0600) < 0)
        step = "set up";
    else if (listen(fd, 16) < 0)
        step = "listen on";
    if (step) {
        snprintf(err, err_len, "cannot %s the control socket %s: %s", step, tmp, strerror(errno));
        unlink(tmp);
        close(fd);
        return -1;
    }
    return fd;
}

int svc_bind_publish(const char *path, char *err, size_t err_len)
{
    char tmp[sizeof(((struct sockaddr_un *)0)->sun_path)];
    snprintf(tmp, sizeof(tmp), "%s%s", path, tmp_suffix);
    if (rename(tmp, path) < 0) {
        snprintf(err, err_len, "cannot put the control socket in place at %s: %s", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

int svc_peer_allowed(int fd, uid_t *uid, pid_t *pid)
{
    struct ucred cred;
    socklen_t len = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 || len != sizeof(cred))
        return -1;
    *uid = cred.uid;
    *pid = cred.pid;
    return cred.uid == 0 || cred.uid == geteuid();
}

static int pidfile_path(const char *dir, const char *name, char *out, size_t cap)
{
    int n = snprintf(out, cap, "%s/%s", dir, name);
    return n < 0 || (size_t)n >= cap ? -1 : 0;
}

int svc_pidfile_write(const char *dir, char *err, size_t err_len)
{
    char path[PATH_MAX], tmp[PATH_MAX];
    if (pidfile_path(dir, SVC_PID_FILE, path, sizeof(path)) < 0 ||
        pidfile_path(dir, "." SVC_PID_FILE ".tmp", tmp, sizeof(tmp)) < 0) {
        snprintf(err, err_len, "state folder path %s is too long", dir);
        return -1;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) {
        snprintf(err, err_len, "cannot write %s: %s", tmp, strerror(errno));
        return -1;
    }
    char line[32];
    int n = snprintf(line, sizeof(line), "%ld\n", (long)getpid());
    if (write(fd, line, (size_t)n) != n || fsync(fd) < 0) {
        snprintf(err, err_len, "cannot write %s: %s", tmp, strerror(errno));
        close(fd);
        unlink(tmp);
        return -1;
    }
    close(fd);
    if (rename(tmp, path) < 0) {
        snprintf(err, err_len, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

pid_t svc_pidfile_read(const char *dir)
{
    char path[PATH_MAX];
    if (pidfile_path(dir, SVC_PID_FILE, path, sizeof(path)) < 0)
        return -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    char buf[32];
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    char *end;
    errno = 0;
    long v = strtol(buf, &end, 10);
    if (errno || end == buf || (*end != '\n' && *end != '\0') || v <= 0 || v > INT_MAX)
        return -1;
    return (pid_t)v;
}

void svc_pidfile_remove(const char *dir)
{
    char path[PATH_MAX];
    if (svc_pidfile_read(dir) == getpid() && pidfile_path(dir, SVC_PID_FILE, path, sizeof(path)) == 0)
        unlink(path);
}
