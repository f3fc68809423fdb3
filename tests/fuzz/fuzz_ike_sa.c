/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer target for the IKE SA's handling of unauthenticated answers
 * (lib/ike/init.c, sa.c): anything that arrives for our IKE_SA_INIT request.
 *
 * An SA with a PSK profile is started (its request goes to a capturing send
 * hook); the input is a run of u16-length-prefixed datagrams. Each gets our
 * SPIi written over its first 8 bytes (anyone on the path sees it), so the
 * fuzzer reaches the answer checks at once; bit 0 of the first input byte
 * also forces the response flag and message ID 0. Between datagrams a mocked
 * clock moves on by the next input byte * 20 ms, so the grace and
 * retransmission timers fire too. A random X25519 value is a valid key
 * exchange, so a well-formed answer gets through to key setup and IKE_AUTH.
 *
 * Invariants checked (abort on violation): on_down at most once; an
 * established SA never from unauthenticated input alone.
 */
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/log.h"
#include "core/loop.h"
#include "ike/ike.h"
#include "profile/profile.h"

#define FUZZ_MAX_MSGS 6

static const char profile_json[] =
    "{\"version\": 1, \"name\": \"fuzz\", \"mode\": \"manual\","
    " \"gateways\": [{\"host\": \"198.51.100.1\"}],"
    " \"local_id\": \"dev1.m2m.test\", \"remote_id\": \"gw.m2m.test\","
    " \"auth\": {\"method\": \"psk\", \"psk\": \"fuzzing psk, long enough for the check\"},"
    " \"ike\": {\"proposals\": [\"aes256gcm16-prfsha384-x25519\", \"chacha20poly1305-prfsha256-x25519\","
    "  \"aes128-sha256-prfsha256-x25519\"], \"dpd_s\": 0,"
    "  \"retransmit_timeout_s\": 1.0, \"retransmit_base\": 2.0, \"retransmit_tries\": 2},"
    " \"esp\": {\"proposals\": [\"aes256gcm16\"]},"
    " \"tunnel\": {\"request_vip\": true}}";

static uint64_t now_ms;
static uint64_t fake_clock(void)
{
    return now_ms;
}

typedef struct fuzz_state {
    uint8_t spi_i[8];
    int have_spi;
    unsigned n_down, n_established;
} fuzz_state;

static int hook_send(void *arg, const uint8_t *msg, size_t len, bool natt)
{
    fuzz_state *s = arg;
    (void)natt;
    if (!s->have_spi && len >= 8) {
        memcpy(s->spi_i, msg, 8);
        s->have_spi = 1;
    }
    return 0;
}

static void hook_established(void *arg, const ike_child_result *child)
{
    fuzz_state *s = arg;
    (void)child;
    s->n_established++;
}

static void hook_down(void *arg, int err, ike_fault fault, const char *detail)
{
    fuzz_state *s = arg;
    (void)err;
    (void)fault;
    (void)detail;
    s->n_down++;
}

static void set_addr(struct sockaddr_storage *ss, socklen_t *len, uint32_t ip, uint16_t port)
{
    struct sockaddr_in *in = (struct sockaddr_in *)ss;
    memset(ss, 0, sizeof(*ss));
    in->sin_family = AF_INET;
    in->sin_port = htons(port);
    in->sin_addr.s_addr = htonl(ip);
    *len = sizeof(*in);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static profile_set *set;
    static uint8_t msg[65536];
    char err[256];
    if (!set && profile_set_parse(profile_json, strlen(profile_json), NULL, &set, err, sizeof(err)) != 0)
        abort();
    if (size < 1)
        return 0;
    int force_header = data[0] & 1;
    buf_reader in = buf_reader_make(data + 1, size - 1);

    core_loop loop;
    core_log log;
    if (core_loop_init(&loop, NULL, NULL) != 0)
        abort();
    now_ms = 1000000;
    loop.clock_ms = fake_clock;
    core_log_init(&log, NULL);
    fuzz_state st;
    memset(&st, 0, sizeof(st));
    ike_config cfg = { .prof = &set->items[0] };
    set_addr(&cfg.remote, &cfg.remote_len, 0xc6336401, 500);  /* 198.51.100.1 */
    set_addr(&cfg.local, &cfg.local_len, 0xc6336402, 500);
    ike_hooks hooks = { .arg = &st, .send = hook_send, .on_established = hook_established, .on_down = hook_down };
    ike_sa *sa = NULL;
    if (ike_sa_new(&loop, &log, &cfg, &hooks, &sa, err, sizeof(err)) != 0)
        abort();
    ike_sa_start(sa);
    for (int i = 0; i < FUZZ_MAX_MSGS && st.have_spi; i++) {
        buf_reader m;
        if (!buf_get_u16_length_prefixed(&in, &m))
            break;
        size_t len = m.len;
        memcpy(msg, m.p, len);
        if (len >= 8)
            memcpy(msg, st.spi_i, 8);
        if (force_header && len >= 28) {
            msg[17] = 0x20;          /* IKEv2 */
            msg[19] = 0x20;          /* response, from the responder */
            memset(msg + 20, 0, 4);  /* message ID 0 */
        }
        /* the socket it came in on, as the input chooses: an IKE_SA_INIT
         * answer is taken on port 500 only, the rest on either */
        ike_sa_input(sa, msg, len, (data[0] >> (1 + i % 7)) & 1);
        uint8_t step;
        if (buf_get_u8(&in, &step)) {
            now_ms += (uint64_t)step * 20;
            core_loop_run_once(&loop, 0);
        }
        if (st.n_down > 1 || st.n_established > 0)
            abort();
    }
    ike_sa_free(sa);
    core_log_destroy(&log);
    core_loop_destroy(&loop);
    return 0;
}
