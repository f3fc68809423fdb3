/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The profile's tunnel.dns_hook (private to lib/conn): an executable that
 * applies the gateway's DNS servers the way the device wants, run as
 * "HOOK up TUN DNS..." when the tunnel is up and "HOOK down TUN" when it went
 * down. No shell, a minimal environment, never waited for: finished runs are
 * reaped from the engine's timers.
 */
#ifndef M2MVPN_CONN_DNS_HOOK_H
#define M2MVPN_CONN_DNS_HOOK_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "core/log.h"
#include "esp/esp.h"

typedef struct dns_hook {
    pid_t running[4];      /* runs not yet reaped; 0 = free slot */
} dns_hook;

void dns_hook_run(dns_hook *h, core_log *log, const char *hook, const char *tun,
                  const esp_prefix *dns, size_t n_dns, bool up);
/* Reap finished runs without blocking; failures are logged. Returns true
 * while runs are still going. */
bool dns_hook_reap(dns_hook *h, core_log *log);

#endif
