/* SPDX-License-Identifier: Apache-2.0 */
/* Day N software updates: the artifact streamed to a file while hashed
 * (never more than the signed size, never a file of the final name that
 * is not verified), and the profile's installer run without a shell. */
#include "mgmt.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void dl_close(mgmt_dl *d)
{
    if (d->fd >= 0)
        close(d->fd);
    d->fd = -1;
    EVP_MD_CTX_free(d->md);
    d->md = NULL;
}

int mgmt_dl_open(mgmt_dl *d, const char *dir, const char *name, int64_t size, const char *sha256, char *err,
                 size_t err_len)
{
    memset(d, 0, sizeof(*d));
    d->fd = -1;
    if (!dir || !name || !*name || strchr(name, '/') || name[0] == '.' || size < 1 || size > MGMT_ARTIFACT_MAX ||
        !sha256 || strlen(sha256) != 64 || strspn(sha256, "0123456789abcdef") != 64) {
        snprintf(err, err_len, "update download: bad name, size (1..%lld bytes) or sha256",
                 (long long)MGMT_ARTIFACT_MAX);
        return M2MVPN_E_INVAL;
    }
    if (snprintf(d->path, sizeof(d->path), "%s/%s", dir, name) >= (int)sizeof(d->path) ||
        snprintf(d->tmp, sizeof(d->tmp), "%s/.%s.part", dir, name) >= (int)sizeof(d->tmp) ||
        snprintf(d->dir, sizeof(d->dir), "%s", dir) >= (int)sizeof(d->dir)) {
        snprintf(err, err_len, "state directory path too long");
        return M2MVPN_E_INVAL;
    }
    d->size = size;
    memcpy(d->sha256, sha256, 65);
    struct statvfs vs;
    if (statvfs(dir, &vs) == 0 && (uint64_t)vs.f_bavail * vs.f_frsize < (uint64_t)size) {
        snprintf(err, err_len, "update download: %lld bytes do not fit into the state directory %s (%llu free)",
                 (long long)size, dir, (unsigned long long)vs.f_bavail * vs.f_frsize);
        return M2MVPN_E_SYSTEM;
    }
    unlink(d->tmp); /* a stopped earlier attempt */
    d->fd = open(d->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    d->md = EVP_MD_CTX_new();
    if (d->fd < 0 || !d->md || EVP_DigestInit_ex(d->md, EVP_sha256(), NULL) != 1) {
        snprintf(err, err_len, "update download: cannot create %s: %s", d->tmp, strerror(errno));
        mgmt_dl_abort(d);
        return M2MVPN_E_SYSTEM;
    }
    return 0;
}

int mgmt_dl_write(mgmt_dl *d, const void *data, size_t len)
{
    if (d->fd < 0 || d->why[0])
        return -1;
    if ((uint64_t)len > (uint64_t)(d->size - d->got)) {
        snprintf(d->why, sizeof(d->why), "update refused: the server sent more than the signed size of %lld bytes",
                 (long long)d->size);
        return -1;
    }
    const uint8_t *p = data;
    for (size_t done = 0; done < len;) {
        ssize_t n = write(d->fd, p + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            snprintf(d->why, sizeof(d->why), "update download: cannot write %s: %s", d->tmp,
                     n < 0 ? strerror(errno) : "no space");
            d->io_error = true;
            return -1;
        }
        done += (size_t)n;
    }
    EVP_DigestUpdate(d->md, data, len);
    d->got += (int64_t)len;
    return 0;
}

int mgmt_dl_finish(mgmt_dl *d, char *err, size_t err_len)
{
    int r = M2MVPN_E_BUNDLE;
    unsigned char md[32];
    char hex[65];
    if (d->fd < 0 || d->why[0]) {
        snprintf(err, err_len, "%s", d->why[0] ? d->why : "update download: not open");
        goto fail;
    }
    if (d->got != d->size) {
        snprintf(err, err_len, "update refused: the file has %lld bytes, the signed manifest says %lld",
                 (long long)d->got, (long long)d->size);
        goto fail;
    }
    if (EVP_DigestFinal_ex(d->md, md, NULL) != 1) {
        snprintf(err, err_len, "update download: sha256 failed");
        r = M2MVPN_E_SYSTEM;
        goto fail;
    }
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    if (strcmp(hex, d->sha256) != 0) {
        snprintf(err, err_len, "update refused: the file's sha256 does not match the signed manifest");
        goto fail;
    }
    r = M2MVPN_E_SYSTEM;
    if (fchmod(d->fd, 0600) < 0 || fsync(d->fd) < 0) {
        snprintf(err, err_len, "update download: cannot write %s: %s", d->tmp, strerror(errno));
        goto fail;
    }
    int fd = d->fd;
    d->fd = -1;
    if (close(fd) < 0 || rename(d->tmp, d->path) < 0) {
        snprintf(err, err_len, "update download: cannot store %s: %s", d->path, strerror(errno));
        goto fail;
    }
    int dfd = open(d->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    dl_close(d);
    return 0;
fail:
    mgmt_dl_abort(d);
    return r;
}

void mgmt_dl_abort(mgmt_dl *d)
{
    bool had = d->fd >= 0;
    dl_close(d);
    if (had || d->tmp[0])
        unlink(d->tmp);
    d->tmp[0] = '\0';
}

/* The open file fd (named path) is what the signed manifest says; fd is
 * read to its end, not closed. */
static int check_fd(int fd, const char *path, int64_t size, const char *sha256, char *err, size_t err_len)
{
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode)) {
        snprintf(err, err_len, "the stored update %s is gone or not a plain file (%s)", path,
                 fd < 0 ? strerror(errno) : "not a regular file");
        return M2MVPN_E_IO;
    }
    int r = M2MVPN_E_BUNDLE;
    if ((int64_t)sb.st_size != size) {
        snprintf(err, err_len, "the stored update %s changed on disk: %lld bytes, the signed manifest says %lld",
                 path, (long long)sb.st_size, (long long)size);
        return r;
    }
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char buf[65536], dg[32];
    char hex[65];
    int64_t got = 0;
    if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
        snprintf(err, err_len, "sha256 of the stored update failed");
        r = M2MVPN_E_SYSTEM;
        goto out;
    }
    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(err, err_len, "cannot read the stored update %s: %s", path, strerror(errno));
            r = M2MVPN_E_IO;
            goto out;
        }
        if (n == 0)
            break;
        got += n;
        if (EVP_DigestUpdate(md, buf, (size_t)n) != 1) {
            snprintf(err, err_len, "sha256 of the stored update failed");
            r = M2MVPN_E_SYSTEM;
            goto out;
        }
    }
    if (EVP_DigestFinal_ex(md, dg, NULL) != 1) {
        snprintf(err, err_len, "sha256 of the stored update failed");
        r = M2MVPN_E_SYSTEM;
        goto out;
    }
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", dg[i]);
    if (got != size || strcmp(hex, sha256) != 0) {
        snprintf(err, err_len, "the stored update %s changed on disk: its sha256 no longer matches the signed "
                 "manifest", path);
        goto out;
    }
    r = 0;
out:
    EVP_MD_CTX_free(md);
    return r;
}

int mgmt_file_check(const char *path, int64_t size, const char *sha256, char *err, size_t err_len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    int r = check_fd(fd, path, size, sha256, err, err_len);
    if (fd >= 0)
        close(fd);
    return r;
}

int mgmt_file_open_verified(const char *path, int64_t size, const char *sha256, int *ret_fd, char *err,
                            size_t err_len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    int r = check_fd(fd, path, size, sha256, err, err_len);
    if (r == 0 && lseek(fd, 0, SEEK_SET) != 0) {
        snprintf(err, err_len, "cannot read the stored update %s: %s", path, strerror(errno));
        r = M2MVPN_E_IO;
    }
    if (r < 0) {
        if (fd >= 0)
            close(fd);
        return r;
    }
    *ret_fd = fd;
    return 0;
}

void mgmt_dl_sweep(const char *dir)
{
    DIR *dh = dir ? opendir(dir) : NULL;
    if (!dh)
        return;
    struct dirent *e;
    while ((e = readdir(dh))) {
        size_t n = strlen(e->d_name);
        if (n > 13 && !strncmp(e->d_name, ".update-", 8) && !strcmp(e->d_name + n - 5, ".part"))
            unlinkat(dirfd(dh), e->d_name, 0);
    }
    closedir(dh);
}

/* ------------------------------------------------------------ installer */

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Append what the installer wrote to out (out_cap bytes with the NUL; the
 * rest is dropped); returns the new length. */
static size_t keep_output(char *out, size_t out_cap, size_t used, const char *buf, size_t got)
{
    size_t keep = out_cap > used + 1 ? out_cap - used - 1 : 0;
    if (got < keep)
        keep = got;
    memcpy(out + used, buf, keep);
    used += keep;
    if (out_cap)
        out[used] = '\0';
    return used;
}

int mgmt_install_run(const char *installer, const char *file, int file_fd, const char *version, uint32_t timeout_s,
                     const atomic_bool *cancel, char *out, size_t out_cap, char *err, size_t err_len)
{
    if (out_cap)
        out[0] = '\0';
    int pfd[2];
    int nul = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (nul < 0 || pipe2(pfd, O_CLOEXEC) < 0) {
        snprintf(err, err_len, "installer %s could not start: %s", installer, strerror(errno));
        if (nul >= 0)
            close(nul);
        return M2MVPN_E_SYSTEM;
    }
    /* the verified file by its open descriptor: whatever is renamed to
     * its path meanwhile, the installer reads what was hashed */
    char *const argv[] = { (char *)installer, file_fd >= 0 ? "/dev/fd/3" : (char *)file, (char *)version, NULL };
    char *const envp[] = { "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C", NULL };
    pid_t pid = fork();
    if (pid == 0) {
        /* Only async-signal-safe calls from here (the engine has threads). */
        sigset_t none;
        sigemptyset(&none);
        struct sigaction dfl = { .sa_handler = SIG_DFL };
        for (int s = 1; s < 32; s++)
            if (s != SIGKILL && s != SIGSTOP)
                sigaction(s, &dfl, NULL);
        sigprocmask(SIG_SETMASK, &none, NULL);
        setpgid(0, 0);
        /* Each source moved above the targets 0..3 first: a host process
         * running with fds 0-2 closed may have been given any of them as
         * nul, the pipe or the file, and a dup2 onto another's target (or
         * onto itself, keeping FD_CLOEXEC) would lose it. */
        int in = fcntl(nul, F_DUPFD, 10), outw = fcntl(pfd[1], F_DUPFD, 10);
        int ffd = file_fd >= 0 ? fcntl(file_fd, F_DUPFD, 10) : -1;
        if (in < 0 || outw < 0 || (file_fd >= 0 && ffd < 0) || dup2(in, 0) < 0 || dup2(outw, 1) < 0 ||
            dup2(outw, 2) < 0 || (ffd >= 0 && dup2(ffd, 3) < 0))
            _exit(126);
        unsigned first = ffd >= 0 ? 4 : 3;
        long closed = -1;
#ifdef SYS_close_range
        closed = syscall(SYS_close_range, first, ~0u, 0u);
#endif
        if (closed < 0) /* a kernel before 5.9 */
            for (int fd = (int)first; fd < 65536; fd++)
                close(fd);
        execve(installer, argv, envp);
        _exit(127);
    }
    int saved = errno;
    close(nul);
    close(pfd[1]);
    if (pid < 0) {
        close(pfd[0]);
        snprintf(err, err_len, "installer %s could not start: %s", installer, strerror(saved));
        return M2MVPN_E_SYSTEM;
    }
    setpgid(pid, pid); /* also here: no race with the kill below */
    int64_t deadline = mono_ms() + (int64_t)timeout_s * 1000;
    size_t used = 0;
    bool killed = false, timed_out = false, eof = false;
    int status = 0;
    for (;;) {
        if (!eof) {
            struct pollfd p = { .fd = pfd[0], .events = POLLIN };
            int64_t left = deadline - mono_ms();
            int n = poll(&p, 1, left <= 0 ? 0 : left > 200 ? 200 : (int)left);
            if (n > 0) {
                char buf[4096];
                ssize_t got = read(pfd[0], buf, sizeof(buf));
                if (got > 0) {
                    used = keep_output(out, out_cap, used, buf, (size_t)got);
                } else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
                    eof = true;
                }
            }
        } else {
            struct timespec ts = { 0, 100 * 1000 * 1000 };
            nanosleep(&ts, NULL);
        }
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid) {
            /* what it wrote last (its group may live on with the pipe:
             * not waited for) */
            for (int i = 0; i < 64 && !eof; i++) {
                struct pollfd p = { .fd = pfd[0], .events = POLLIN };
                char buf[4096];
                ssize_t got = poll(&p, 1, 0) > 0 ? read(pfd[0], buf, sizeof(buf)) : 0;
                if (got <= 0)
                    break;
                used = keep_output(out, out_cap, used, buf, (size_t)got);
            }
            break;
        }
        if (!killed && (mono_ms() >= deadline || (cancel && atomic_load(cancel)))) {
            timed_out = mono_ms() >= deadline;
            kill(-pid, SIGKILL);
            kill(pid, SIGKILL);
            killed = true;
        }
    }
    if (killed || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        kill(-pid, SIGKILL); /* what it left behind in its group */
    close(pfd[0]);
    if (killed) {
        snprintf(err, err_len, "installer %s %s", installer,
                 timed_out ? "did not finish in time and was killed" : "was stopped (the engine stops)");
        if (timed_out)
            snprintf(err + strlen(err), err_len - strlen(err), " after %u s", timeout_s);
        return M2MVPN_E_SYSTEM;
    }
    if (WIFSIGNALED(status)) {
        snprintf(err, err_len, "installer %s was killed by signal %d", installer, WTERMSIG(status));
        return M2MVPN_E_SYSTEM;
    }
    int code = WEXITSTATUS(status);
    if (code == 127 && !used) {
        snprintf(err, err_len, "installer %s could not be started (exit status 127)", installer);
        return M2MVPN_E_SYSTEM;
    }
    if (code != 0) {
        snprintf(err, err_len, "installer %s failed with exit status %d", installer, code);
        return M2MVPN_E_SYSTEM;
    }
    return 0;
}
