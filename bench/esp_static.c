/* SPDX-License-Identifier: Apache-2.0 */
/*
 * esp_static: our ESP datapath with static keys, for benchmarks and manual
 * tests. Creates the TUN, sets address/route, installs one SA and forwards
 * until SIGINT/SIGTERM, then prints the counters.
 *
 *   esp_static --tun m2e0 --local 198.51.100.1 --peer 198.51.100.2
 *              --spi-in c0000001 --spi-out c0000002
 *              --key-in HEX --key-out HEX [--cipher aes256gcm16]
 *              --addr 198.18.0.1/32 --route 198.18.0.2/32 [--route ...]
 *              [--mtu N] [--port 4500] [--esn] [--single-thread] [--kill-switch]
 *              [--no-offload]   (plain TUN/UDP I/O: no TSO/GRO, no UDP GSO/GRO)
 *
 * Keys are KEYMAT of one direction: AEAD key + 4-byte salt, or for
 * "aes256-sha256" style ciphers the AES key followed by the HMAC key.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/loop.h"
#include "core/secmem.h"
#include "esp/esp.h"
#include "profile/proposal.h"

static core_loop *g_loop;           /* for the signal handler only */
static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
    if (g_loop)
        core_loop_wake(g_loop);
}

static void on_wake(void *arg) { (void)arg; }

static int parse_hex(const char *s, uint8_t *out, size_t cap, size_t *len)
{
    size_t n = strlen(s);
    if (n % 2 || n / 2 > cap)
        return -1;
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1)
            return -1;
        out[i] = (uint8_t)v;
    }
    *len = n / 2;
    return 0;
}

static int parse_prefix(const char *s, esp_prefix *p)
{
    char buf[64];
    snprintf(buf, sizeof(buf), "%s", s);
    char *slash = strchr(buf, '/');
    int len = -1;
    if (slash) {
        *slash = 0;
        len = atoi(slash + 1);
    }
    memset(p, 0, sizeof(*p));
    if (inet_pton(AF_INET, buf, p->addr) == 1) {
        p->family = AF_INET;
        p->prefix_len = (uint8_t)(len < 0 ? 32 : len);
    } else if (inet_pton(AF_INET6, buf, p->addr) == 1) {
        p->family = AF_INET6;
        p->prefix_len = (uint8_t)(len < 0 ? 128 : len);
    } else {
        return -1;
    }
    return 0;
}

static int parse_sockaddr(const char *s, uint16_t port, struct sockaddr_storage *ss,
                          socklen_t *len)
{
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *sin = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, s, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
        *len = sizeof(*sin);
        return 0;
    }
    if (inet_pton(AF_INET6, s, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(port);
        *len = sizeof(*sin6);
        return 0;
    }
    return -1;
}

static void split_keys(esp_sa_keys *k, const uint8_t *raw, size_t len, size_t integ_len)
{
    k->encr_len = len - integ_len;
    memcpy(k->encr, raw, k->encr_len);
    k->integ_len = integ_len;
    memcpy(k->integ, raw + k->encr_len, integ_len);
}

static void usage(void)
{
    fprintf(stderr, "usage: esp_static --tun NAME --local IP --peer IP --spi-in HEX --spi-out HEX\n"
                    "       --key-in HEX --key-out HEX [--cipher aes256gcm16] --addr P/L\n"
                    "       --route P/L [--route ...] [--mtu N] [--port N] [--esn]\n"
                    "       [--single-thread] [--kill-switch] [--keepalive S] [--no-offload]\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "tun", 1, 0, 't' }, { "local", 1, 0, 'l' }, { "peer", 1, 0, 'p' },
        { "spi-in", 1, 0, 'i' }, { "spi-out", 1, 0, 'o' }, { "key-in", 1, 0, 'I' },
        { "key-out", 1, 0, 'O' }, { "cipher", 1, 0, 'c' }, { "addr", 1, 0, 'a' },
        { "route", 1, 0, 'r' }, { "mtu", 1, 0, 'm' }, { "port", 1, 0, 'P' },
        { "esn", 0, 0, 'e' }, { "single-thread", 0, 0, 's' }, { "kill-switch", 0, 0, 'k' },
        { "keepalive", 1, 0, 'K' }, { "no-offload", 0, 0, 'G' }, { 0, 0, 0, 0 },
    };
    esp_datapath_config dcfg = { .threads = true, .configure_network = true };
    esp_sa_config sa = { .replay_window = ESP_REPLAY_DEFAULT };
    esp_tunnel_net net = {0};
    const char *local = NULL, *peer = NULL, *cipher = "aes256gcm16";
    uint8_t key_in[128], key_out[128];
    size_t key_in_len = 0, key_out_len = 0;
    uint16_t port = ESP_UDP_PORT;
    uint32_t keepalive = 0;
    int c;

    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 't': snprintf(dcfg.tun_name, sizeof(dcfg.tun_name), "%s", optarg); break;
        case 'l': local = optarg; break;
        case 'p': peer = optarg; break;
        case 'i': sa.spi_in = (uint32_t)strtoul(optarg, NULL, 16); break;
        case 'o': sa.spi_out = (uint32_t)strtoul(optarg, NULL, 16); break;
        case 'I': if (parse_hex(optarg, key_in, sizeof(key_in), &key_in_len)) goto bad; break;
        case 'O': if (parse_hex(optarg, key_out, sizeof(key_out), &key_out_len)) goto bad; break;
        case 'c': cipher = optarg; break;
        case 'a': if (parse_prefix(optarg, &net.vip)) goto bad; net.has_vip = true; break;
        case 'r':
            if (net.n_remote_ts >= ESP_MAX_TS || parse_prefix(optarg, &net.remote_ts[net.n_remote_ts]))
                goto bad;
            net.n_remote_ts++;
            break;
        case 'm': dcfg.mtu = (uint32_t)atoi(optarg); break;
        case 'P': port = (uint16_t)atoi(optarg); break;
        case 'e': sa.esn = true; break;
        case 's': dcfg.threads = false; break;
        case 'k': dcfg.kill_switch = true; break;
        case 'K': keepalive = (uint32_t)atoi(optarg); break;
        case 'G': dcfg.no_offload = true; break;
        default: goto bad;
        }
    }
    if (!local || !peer || !sa.spi_in || !sa.spi_out || !key_in_len || !key_out_len)
        goto bad;

    char err[256];
    /* Own small table: the benchmark must not depend on the profile parser. */
    static const struct { const char *name; uint16_t encr, bits, integ; } ciphers[] = {
        { "aes128gcm16", ENCR_AES_GCM_16, 128, 0 },
        { "aes256gcm16", ENCR_AES_GCM_16, 256, 0 },
        { "chacha20poly1305", ENCR_CHACHA20_POLY1305, 256, 0 },
        { "aes128-sha256", ENCR_AES_CBC, 128, AUTH_HMAC_SHA2_256_128 },
        { "aes256-sha256", ENCR_AES_CBC, 256, AUTH_HMAC_SHA2_256_128 },
        { "aes256-sha384", ENCR_AES_CBC, 256, AUTH_HMAC_SHA2_384_192 },
        { "aes256-sha512", ENCR_AES_CBC, 256, AUTH_HMAC_SHA2_512_256 },
    };
    size_t ci = 0;
    while (ci < sizeof(ciphers) / sizeof(ciphers[0]) && strcmp(ciphers[ci].name, cipher))
        ci++;
    if (ci == sizeof(ciphers) / sizeof(ciphers[0])) {
        fprintf(stderr, "esp_static: unknown cipher '%s'\n", cipher);
        return 2;
    }
    sa.encr_id = ciphers[ci].encr;
    sa.encr_key_bits = ciphers[ci].bits;
    sa.integ_id = ciphers[ci].integ;
    size_t per_dir = esp_keymat_len(sa.encr_id, sa.encr_key_bits, sa.integ_id);
    if (!per_dir || key_in_len != per_dir || key_out_len != per_dir) {
        fprintf(stderr, "esp_static: keys must be %zu bytes for %s\n", per_dir, cipher);
        return 2;
    }
    size_t integ_len = per_dir - (sa.encr_key_bits / 8u) -
                       (sa.integ_id ? 0 : 4); /* AEAD: key + salt, no integ key */
    split_keys(&sa.key_in, key_in, key_in_len, integ_len);
    split_keys(&sa.key_out, key_out, key_out_len, integ_len);
    secure_wipe(key_in, sizeof(key_in));
    secure_wipe(key_out, sizeof(key_out));
    if (parse_sockaddr(local, port, &dcfg.local, &dcfg.local_len) ||
        parse_sockaddr(peer, port, &sa.peer, &sa.peer_len))
        goto bad;
    net.encr_id = sa.encr_id;
    net.integ_id = sa.integ_id;

    core_loop loop;
    if (core_loop_init(&loop, on_wake, NULL) < 0) {
        fprintf(stderr, "esp_static: event loop failed\n");
        return 1;
    }
    g_loop = &loop;
    struct sigaction sact = { .sa_handler = on_signal };
    sigaction(SIGINT, &sact, NULL);
    sigaction(SIGTERM, &sact, NULL);

    esp_datapath *dp;
    int rc = esp_datapath_new(&dcfg, &dp, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "esp_static: %s\n", err);
        return 1;
    }
    if ((rc = esp_datapath_attach(dp, &loop, NULL, NULL)) < 0 ||
        (rc = esp_datapath_set_network(dp, &net, err, sizeof(err))) < 0 ||
        (rc = esp_datapath_install_sa(dp, &sa, err, sizeof(err))) < 0 ||
        (rc = esp_datapath_start(dp)) < 0) {
        fprintf(stderr, "esp_static: setup failed (%d): %s\n", rc, err);
        esp_datapath_teardown(dp, true);
        esp_datapath_free(dp);
        return 1;
    }
    secure_wipe(&sa, sizeof(sa));
    esp_datapath_set_keepalive(dp, keepalive);
    printf("esp_static: running on %s\n", dcfg.tun_name[0] ? dcfg.tun_name : "m2m0");
    fflush(stdout);
    while (!g_stop)
        core_loop_run_once(&loop, -1);

    esp_datapath_counters ctr;
    esp_datapath_get_counters(dp, &ctr);
    printf("packets in %llu out %llu bytes in %llu out %llu", (unsigned long long)ctr.total.packets_in,
           (unsigned long long)ctr.total.packets_out, (unsigned long long)ctr.total.bytes_in,
           (unsigned long long)ctr.total.bytes_out);
    for (int i = 0; i < ESP_DROP__COUNT; i++)
        if (ctr.total.dropped[i])
            printf(" drop_%s %llu", esp_drop_reason_name((esp_drop_reason)i),
                   (unsigned long long)ctr.total.dropped[i]);
    printf("\n");
    esp_datapath_teardown(dp, true);
    esp_datapath_free(dp);
    core_loop_destroy(&loop);
    return 0;
bad:
    usage();
    return 2;
}
