/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ike_probe: runs only the IKEv2 initiator (lib/ike) of a profile against a
 * gateway, with plain UDP sockets and no ESP datapath, and prints one JSON
 * line with the outcome. The interop tests use it to check IKE and the CHILD
 * SA on the gateway independently of the datapath.
 *
 *   ike_probe PROFILE.json [--hold SECONDS] [-v]
 * Exit 0: established (and, after --hold, deleted again); 1: failed.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "api/handle.h"
#include "core/log.h"
#include "core/loop.h"
#include "cred/cred.h"
#include "ike/ike.h"

typedef struct probe {
    core_loop loop;
    core_log log;
    int s500, s4500;
    core_io io500, io4500;
    ike_sa *sa;
    bool done, established;
    int err;
    char detail[512];
    char vip[32];
    core_timer hold;
} probe;

static void on_log(m2mvpn *h, int level, const char *sub, const char *msg, void *ud)
{
    (void)h;
    (void)ud;
    fprintf(stderr, "[%d %s] %s\n", level, sub, msg);
}

static int probe_send(void *arg, const uint8_t *msg, size_t len, bool natt)
{
    probe *p = arg;
    if (!natt)
        return send(p->s500, msg, len, 0) < 0 ? M2MVPN_E_NETWORK : 0;
    uint8_t buf[65536];
    memset(buf, 0, 4); /* non-ESP marker */
    memcpy(buf + 4, msg, len);
    return send(p->s4500, buf, len + 4, 0) < 0 ? M2MVPN_E_NETWORK : 0;
}

static void on_established(void *arg, const ike_child_result *r)
{
    probe *p = arg;
    p->established = true;
    if (r->has_vip)
        inet_ntop(AF_INET, r->vip, p->vip, sizeof(p->vip));
}

static void on_down(void *arg, int err, ike_fault fault, const char *detail)
{
    (void)fault;
    probe *p = arg;
    p->done = true;
    p->err = err;
    snprintf(p->detail, sizeof(p->detail), "%s", detail ? detail : "");
}

static void on_recv(probe *p, int fd, bool natt)
{
    uint8_t buf[65536];
    ssize_t n;
    while ((n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT)) > 0) {
        if (natt) {
            if (n < 4 || memcmp(buf, "\0\0\0\0", 4) != 0)
                continue; /* ESP or keepalive: no datapath here */
            ike_sa_input(p->sa, buf + 4, (size_t)n - 4, true);
        } else {
            ike_sa_input(p->sa, buf, (size_t)n, false);
        }
    }
}

static void on_500(void *arg, uint32_t ev)
{
    (void)ev;
    probe *p = arg;
    on_recv(p, p->s500, false);
}

static void on_4500(void *arg, uint32_t ev)
{
    (void)ev;
    probe *p = arg;
    on_recv(p, p->s4500, true);
}

static void end_hold(void *arg)
{
    probe *p = arg;
    ike_sa_close(p->sa);
}

static int udp_to(const struct sockaddr_storage *gw, socklen_t len, uint16_t port)
{
    struct sockaddr_storage to = *gw;
    ((struct sockaddr_in *)&to)->sin_port = htons(port);
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0 || connect(s, (struct sockaddr *)&to, len) < 0) {
        perror("socket");
        exit(2);
    }
    return s;
}

static void print_json_string(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            printf("\\%c", *s);
        else if ((unsigned char)*s < 0x20)
            printf("\\u%04x", *s);
        else
            putchar(*s);
    }
    putchar('"');
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: ike_probe PROFILE.json [--hold SECONDS] [-v]\n");
        return 2;
    }
    int hold_s = 0;
    bool verbose = false;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--hold") && i + 1 < argc)
            hold_s = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-v"))
            verbose = true;
    }
    char err[512];
    profile_set *set = NULL;
    if (profile_set_load_file(argv[1], &set, err, sizeof(err)) < 0) {
        fprintf(stderr, "ike_probe: %s\n", err);
        return 2;
    }
    const profile *prof = &set->items[0];
    probe p = { 0 };
    core_loop_init(&p.loop, NULL, NULL);
    core_log_init(&p.log, NULL);
    core_log_set(&p.log, on_log, verbose ? M2MVPN_LOG_DEBUG : M2MVPN_LOG_INFO, NULL);

    struct addrinfo hints = { .ai_family = AF_INET, .ai_socktype = SOCK_DGRAM }, *res;
    char port[8];
    snprintf(port, sizeof(port), "%u", prof->gateways[0].port);
    if (getaddrinfo(prof->gateways[0].host, port, &hints, &res) != 0) {
        fprintf(stderr, "ike_probe: cannot resolve %s\n", prof->gateways[0].host);
        return 2;
    }
    ike_config cfg = { .prof = prof };
    memcpy(&cfg.remote, res->ai_addr, res->ai_addrlen);
    cfg.remote_len = res->ai_addrlen;
    freeaddrinfo(res);
    p.s500 = udp_to(&cfg.remote, cfg.remote_len, prof->gateways[0].port);
    p.s4500 = udp_to(&cfg.remote, cfg.remote_len, 4500);
    cfg.local_len = sizeof(cfg.local);
    getsockname(p.s500, (struct sockaddr *)&cfg.local, &cfg.local_len);
    core_io_add(&p.loop, &p.io500, p.s500, EPOLLIN, on_500, &p);
    core_io_add(&p.loop, &p.io4500, p.s4500, EPOLLIN, on_4500, &p);

    pki_trust *trust = NULL;
    pki_trust_new(&trust);
    for (size_t i = 0; i < prof->n_ca; i++)
        if (pki_trust_add_file(trust, prof->ca[i], err, sizeof(err)) < 0) {
            fprintf(stderr, "ike_probe: %s\n", err);
            return 2;
        }
    cfg.trust = trust;
    cred_provider *cred = NULL;
    if (prof->auth == PROFILE_AUTH_CERT) {
        const char *pin = prof->cert.pin;
        if (cred_file_open(prof->cert.file, prof->cert.key, pin, pin ? strlen(pin) : 0, &cred, err,
                           sizeof(err)) < 0) {
            fprintf(stderr, "ike_probe: %s\n", err);
            return 2;
        }
        cfg.cred = cred;
    }
    ike_hooks hooks = { .arg = &p, .send = probe_send, .on_established = on_established, .on_down = on_down };
    if (ike_sa_new(&p.loop, &p.log, &cfg, &hooks, &p.sa, err, sizeof(err)) < 0) {
        fprintf(stderr, "ike_probe: %s\n", err);
        return 2;
    }
    core_timer_init(&p.hold, end_hold, &p);
    ike_sa_start(p.sa);
    bool held = false;
    while (!p.done) {
        core_loop_run_once(&p.loop, -1);
        if (p.established && !held) {
            held = true;
            char ike_alg[96], esp_alg[96];
            ike_sa_describe(p.sa, ike_alg, sizeof(ike_alg), esp_alg, sizeof(esp_alg));
            printf("{\"result\": \"established\", \"ike\": \"%s\", \"esp\": \"%s\", \"vip\": \"%s\"}\n",
                   ike_alg, esp_alg, p.vip);
            fflush(stdout);
            core_timer_arm(&p.loop, &p.hold, (uint64_t)hold_s * 1000);
        }
    }
    if (!p.established) {
        printf("{\"result\": \"failed\", \"error\": \"%s\", \"code\": %d, \"detail\": ",
               m2mvpn_strerror(p.err), p.err);
        print_json_string(p.detail);
        printf("}\n");
    }
    ike_sa_free(p.sa);
    cred_free(cred);
    pki_trust_free(trust);
    profile_set_free(set);
    core_loop_destroy(&p.loop);
    return p.established ? 0 : 1;
}
