/* SPDX-License-Identifier: Apache-2.0 */
#include "dns_hook.h"

#include <arpa/inet.h>
#include <spawn.h>
#include <string.h>
#include <sys/wait.h>

#define N_SLOTS (sizeof(((dns_hook *)0)->running) / sizeof(pid_t))

bool dns_hook_reap(dns_hook *h, core_log *log)
{
    bool busy = false;
    for (size_t i = 0; i < N_SLOTS; i++) {
        int st;
        if (h->running[i] > 0 && waitpid(h->running[i], &st, WNOHANG) == h->running[i]) {
            if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
                LOG_WARN(log, "conn", "tunnel.dns_hook (pid %d) failed (status %d)", (int)h->running[i], st);
            h->running[i] = 0;
        }
        busy |= h->running[i] > 0;
    }
    return busy;
}

void dns_hook_run(dns_hook *h, core_log *log, const char *hook, const char *tun,
                  const esp_prefix *dns, size_t n_dns, bool up)
{
    dns_hook_reap(h, log);
    size_t slot = 0;
    while (slot < N_SLOTS && h->running[slot] > 0)
        slot++;
    if (slot == N_SLOTS) {
        LOG_WARN(log, "conn", "tunnel.dns_hook still busy; not run");
        return;
    }
    char text[ESP_MAX_DNS][INET6_ADDRSTRLEN];
    char *argv[4 + ESP_MAX_DNS];
    size_t n = 0;
    argv[n++] = (char *)hook;
    argv[n++] = up ? "up" : "down";
    argv[n++] = (char *)(tun ? tun : "m2m0");
    for (size_t i = 0; i < n_dns && i < ESP_MAX_DNS; i++)
        if (inet_ntop(dns[i].family, dns[i].addr, text[i], sizeof(text[i])))
            argv[n++] = text[i];
    argv[n] = NULL;
    char *envp[] = { "PATH=/usr/sbin:/usr/bin:/sbin:/bin", NULL };
    pid_t pid;
    int e = posix_spawn(&pid, hook, NULL, NULL, argv, envp);
    if (e != 0) {
        LOG_WARN(log, "conn", "cannot run tunnel.dns_hook %s: %s", hook, strerror(e));
        return;
    }
    h->running[slot] = pid;
}
