/* SPDX-License-Identifier: Apache-2.0 */
/* run / start / stop: the service's own lifecycle. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "control.h"
#include "ctl_client.h"
#include "service.h"
#include "service_fs.h"

#define CLI_START_TIMEOUT_MS 20000
#define CLI_STOP_TIMEOUT_MS 20000

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int cli_cmd_run(int argc, char **argv)
{
    cli_opts o;
    if (cli_parse(argc, argv, CLI_OPT_CONTROL | CLI_OPT_STATE_DIR | CLI_OPT_PROFILE | CLI_OPT_VERBOSE | CLI_OPT_LOG |
                  CLI_OPT_GROUP, 0, 0, &o) < 0)
        return CLI_EXIT_USAGE;
    if (!o.profile) {
        cli_error("%s: --profile FILE is required", argv[0]);
        return CLI_EXIT_USAGE;
    }
    service_opts so = {
        .profile = o.profile, .control = o.control, .state_dir = o.state_dir,
        .verbose = o.verbose, .ready_fd = -1, .control_group = o.control_group,
    };
    svc_log_sink_parse(o.log ? o.log : "stderr", &so.log_sink);
    return service_run(&so);
}

/* An absolute version of `path` (the detached service runs in "/"). */
static int absolute_path(const char *path, char *out, size_t cap)
{
    if (path[0] == '/')
        return snprintf(out, cap, "%s", path) < (int)cap ? 0 : -1;
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof(cwd)))
        return -1;
    int n = snprintf(out, cap, "%s/%s", cwd, path);
    return n < 0 || (size_t)n >= cap ? -1 : 0;
}

/* The detached grandchild: never returns. */
static void become_service(const service_opts *so, int ready_fd)
{
    char err[1024], log_path[PATH_MAX];
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (devnull >= 0) {
        dup2(devnull, STDIN_FILENO);
        dup2(devnull, STDOUT_FILENO);
    }
    if (chdir("/") < 0) {
        dprintf(ready_fd, "error cannot change to /: %s\n", strerror(errno));
        _exit(CLI_EXIT_FAILED);
    }
    if (svc_prepare_dir(so->state_dir, err, sizeof(err)) < 0) {
        dprintf(ready_fd, "error %s\n", err);
        _exit(CLI_EXIT_FAILED);
    }
    int n = snprintf(log_path, sizeof(log_path), "%s/%s", so->state_dir, SVC_LOG_FILE);
    int log_fd = n < 0 || (size_t)n >= sizeof(log_path) ? (errno = ENAMETOOLONG, -1) : open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (log_fd < 0) {
        dprintf(ready_fd, "error cannot open the log file %s: %s\n", log_path, strerror(errno));
        _exit(CLI_EXIT_FAILED);
    }
    dup2(log_fd, STDERR_FILENO);
    close(log_fd);
    service_opts mine = *so;
    mine.ready_fd = ready_fd;
    _exit(service_run(&mine));
}

/* Read the start-up verdict from the service: "ready" or "error <text>". */
static int read_verdict(int fd, char *buf, size_t cap)
{
    size_t got = 0;
    long long deadline = now_ms() + CLI_START_TIMEOUT_MS;
    while (got + 1 < cap) {
        long long left = deadline - now_ms();
        struct pollfd p = { .fd = fd, .events = POLLIN };
        if (left <= 0 || poll(&p, 1, (int)left) == 0)
            return -ETIMEDOUT;
        ssize_t n = read(fd, buf + got, cap - 1 - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
        if (memchr(buf, '\n', got))
            break;
    }
    buf[got] = '\0';
    char *nl = strchr(buf, '\n');
    if (nl)
        *nl = '\0';
    return 0;
}

int cli_cmd_start(int argc, char **argv)
{
    cli_opts o;
    if (cli_parse(argc, argv, CLI_OPT_CONTROL | CLI_OPT_STATE_DIR | CLI_OPT_PROFILE | CLI_OPT_VERBOSE | CLI_OPT_LOG |
                  CLI_OPT_GROUP, 0, 0, &o) < 0)
        return CLI_EXIT_USAGE;
    if (!o.profile) {
        cli_error("start: --profile FILE is required");
        return CLI_EXIT_USAGE;
    }
    char profile[PATH_MAX], control[PATH_MAX], state_dir[PATH_MAX];
    if (!realpath(o.profile, profile)) {
        cli_error("cannot read profile %s: %s", o.profile, strerror(errno));
        return CLI_EXIT_FAILED;
    }
    if (absolute_path(o.control, control, sizeof(control)) < 0 ||
        absolute_path(o.state_dir, state_dir, sizeof(state_dir)) < 0) {
        cli_error("start: path too long");
        return CLI_EXIT_USAGE;
    }
    if (ctl_client_reachable(control)) {
        cli_error("a service already answers at %s", control);
        return CLI_EXIT_FAILED;
    }
    service_opts so = {
        .profile = profile, .control = control, .state_dir = state_dir, .verbose = o.verbose, .ready_fd = -1,
        .control_group = o.control_group,
    };
    svc_log_sink_parse(o.log ? o.log : "stderr", &so.log_sink);
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) < 0) {
        cli_error("cannot start the service: %s", strerror(errno));
        return CLI_EXIT_FAILED;
    }
    fflush(NULL);
    pid_t child = fork();
    if (child < 0) {
        cli_error("cannot start the service: %s", strerror(errno));
        close(pipefd[0]);
        close(pipefd[1]);
        return CLI_EXIT_FAILED;
    }
    if (child == 0) {
        /* Detach: new session, then fork again so it can never regain a
         * controlling terminal and is not our child. */
        close(pipefd[0]);
        if (setsid() < 0)
            _exit(CLI_EXIT_FAILED);
        pid_t grandchild = fork();
        if (grandchild != 0)
            _exit(grandchild < 0 ? CLI_EXIT_FAILED : CLI_EXIT_OK);
        become_service(&so, pipefd[1]);
    }
    close(pipefd[1]);
    int st = 0;
    while (waitpid(child, &st, 0) < 0 && errno == EINTR)
        ;
    char verdict[1200];
    int r = read_verdict(pipefd[0], verdict, sizeof(verdict));
    close(pipefd[0]);
    if (r < 0) {
        cli_error("the service did not come up within %d s (see %s/%s)", CLI_START_TIMEOUT_MS / 1000, state_dir,
                  SVC_LOG_FILE);
        return CLI_EXIT_FAILED;
    }
    if (strncmp(verdict, "error ", 6) == 0) {
        cli_error("%s", verdict + 6);
        return CLI_EXIT_FAILED;
    }
    if (strcmp(verdict, "ready") != 0) {
        cli_error("the service ended during start-up (see %s/%s)", state_dir, SVC_LOG_FILE);
        return CLI_EXIT_FAILED;
    }
    /* Ready means listening; make sure it also answers. */
    cli_opts probe = o;
    probe.control = control;
    r = cli_call(&probe, "status", CTL_CMD_STATUS, NULL, 0, NULL);
    if (r != CLI_EXIT_OK)
        return r;
    printf("m2mvpn service started (pid %ld, control socket %s)\n", (long)svc_pidfile_read(state_dir), control);
    return CLI_EXIT_OK;
}

/* A process that is gone or only a zombie no longer runs. */
static int process_alive(pid_t pid)
{
    if (pid <= 0 || (kill(pid, 0) < 0 && errno == ESRCH))
        return 0;
    char path[64], buf[256];
    snprintf(path, sizeof(path), "/proc/%ld/stat", (long)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    const char *paren = strrchr(buf, ')');
    return !(paren && paren[1] == ' ' && paren[2] == 'Z');
}

int cli_cmd_stop(int argc, char **argv)
{
    cli_opts o;
    if (cli_parse(argc, argv, CLI_OPT_CONTROL | CLI_OPT_STATE_DIR, 0, 0, &o) < 0)
        return CLI_EXIT_USAGE;
    pid_t pid = svc_pidfile_read(o.state_dir);
    int r = cli_call(&o, "stop", CTL_CMD_STOP, NULL, 0, NULL);
    if (r != CLI_EXIT_OK)
        return r;
    long long deadline = now_ms() + CLI_STOP_TIMEOUT_MS;
    while (now_ms() < deadline) {
        pid_t still = svc_pidfile_read(o.state_dir);
        int running = (still > 0 && still == pid && process_alive(pid)) || ctl_client_reachable(o.control);
        if (!running)
            return CLI_EXIT_OK;
        struct timespec pause = { 0, 50 * 1000 * 1000 };
        nanosleep(&pause, NULL);
    }
    cli_error("the service did not stop within %d s", CLI_STOP_TIMEOUT_MS / 1000);
    return CLI_EXIT_FAILED;
}
