/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer target for rekeying (lib/ike/rekey.c): what an authenticated
 * gateway can put into CREATE_CHILD_SA and the Deletes around it, after
 * decryption (the SK layer is fuzz_ike's and fuzz_ike_sa's).
 *
 * An SA is put into the ESTABLISHED state with keys derived from fixed
 * values (what IKE_SA_INIT/IKE_AUTH would have left), a CHILD SA and its
 * selectors. The input is a run of records: one control byte, then a
 * u16-length-prefixed inner payload chain whose first payload type is the
 * next byte. Control bits 0-1 choose what the chain is taken as: a
 * CREATE_CHILD_SA request from the gateway, the answer to our CHILD SA
 * rekey, the answer to our IKE SA rekey, an INFORMATIONAL request (Deletes);
 * bit 2 starts our CHILD SA rekey first, bit 3 our IKE SA rekey; bits 4-7
 * move the mocked clock by that many seconds (graces, retries, zombies).
 *
 * Invariants checked (abort on violation): on_down at most once; every SA
 * reported by on_child_rekeyed has keys of the negotiated length; no CHILD
 * SA reported deleted twice.
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
#include "ike/sa_internal.h"
#include "profile/profile.h"

#define FUZZ_MAX_RECORDS 8

static const char profile_json[] =
    "{\"version\": 1, \"name\": \"fuzz\", \"mode\": \"manual\","
    " \"gateways\": [{\"host\": \"198.51.100.1\"}],"
    " \"local_id\": \"dev1.m2m.test\", \"remote_id\": \"gw.m2m.test\","
    " \"auth\": {\"method\": \"psk\", \"psk\": \"fuzzing psk, long enough for the check\"},"
    " \"ike\": {\"proposals\": [\"aes256gcm16-prfsha384-x25519\", \"aes128-sha256-prfsha256-ecp256\"], \"dpd_s\": 0,"
    "  \"retransmit_timeout_s\": 1.0, \"retransmit_base\": 2.0, \"retransmit_tries\": 2},"
    " \"esp\": {\"proposals\": [\"aes256gcm16-x25519\", \"aes128-sha256\"]},"
    " \"tunnel\": {\"request_vip\": true}}";

static uint64_t now_ms;
static uint64_t fake_clock(void)
{
    return now_ms;
}

typedef struct fuzz_state {
    unsigned n_down;
    uint32_t deleted[64];
    size_t n_deleted;
} fuzz_state;

static int hook_send(void *arg, const uint8_t *msg, size_t len, bool natt)
{
    (void)arg;
    (void)msg;
    (void)len;
    (void)natt;
    return 0;
}

static void hook_down(void *arg, int err, ike_fault fault, const char *detail)
{
    fuzz_state *s = arg;
    (void)err;
    (void)fault;
    (void)detail;
    s->n_down++;
}

static void hook_rekeyed(void *arg, uint32_t old_spi_in, const ike_child_result *r, bool outbound)
{
    (void)arg;
    (void)old_spi_in;
    (void)outbound;
    size_t per_dir = r->keymat_len / 2;
    if (r->keymat_len == 0 || r->keymat_len % 2 || per_dir > CRYPTO_MAX_KEY_LEN * 2 || r->spi_in < 256)
        abort();
}

static void hook_deleted(void *arg, uint32_t spi_in)
{
    fuzz_state *s = arg;
    for (size_t i = 0; i < s->n_deleted; i++)
        if (s->deleted[i] == spi_in)
            abort();
    if (s->n_deleted < sizeof(s->deleted) / sizeof(s->deleted[0]))
        s->deleted[s->n_deleted++] = spi_in;
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

/* What IKE_SA_INIT and IKE_AUTH would have left: keys, SPIs, a CHILD SA. */
static void establish(ike_sa *sa)
{
    sa->suite = (crypto_suite){ ENCR_AES_GCM_16, 256, 0, PRF_HMAC_SHA2_384 };
    sa->ke_group = KE_X25519;
    memset(sa->spi_r, 0xa5, 8);
    memset(sa->nonce_r, 0x42, 32);
    sa->nonce_r_len = 32;
    uint8_t g_ir[32];
    memset(g_ir, 0x17, sizeof(g_ir));
    char err[128];
    if (ike_sa_install_keys(sa, g_ir, sizeof(g_ir), err, sizeof(err)) != 0)
        abort();
    sa->natt = true;
    sa->next_msg_id = 2;
    sa->peer_msg_id = 0;
    sa->child_spi_out = 0xc1d2e3f4;
    uint8_t vip[4] = { 198, 18, 0, 7 }, any[4] = { 0 };
    ike_ts_from_prefix(vip, 4, 32, 0, 0, 65535, &sa->child_tsi[0]);
    ike_ts_from_prefix(any, 4, 0, 0, 0, 65535, &sa->child_tsr[0]);
    sa->n_child_tsi = sa->n_child_tsr = 1;
    ike_sa_set_state(sa, IKE_SA_ESTABLISHED);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static profile_set *set;
    char err[256];
    if (!set && profile_set_parse(profile_json, strlen(profile_json), NULL, &set, err, sizeof(err)) != 0)
        abort();
    buf_reader in = buf_reader_make(data, size);
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
    set_addr(&cfg.remote, &cfg.remote_len, 0xc6336401, 500); /* 198.51.100.1 */
    set_addr(&cfg.local, &cfg.local_len, 0xc6336402, 500);
    ike_hooks hooks = { .arg = &st, .send = hook_send, .on_down = hook_down, .on_child_rekeyed = hook_rekeyed,
                        .on_child_deleted = hook_deleted };
    ike_sa *sa = NULL;
    if (ike_sa_new(&loop, &log, &cfg, &hooks, &sa, err, sizeof(err)) != 0)
        abort();
    establish(sa);
    for (int i = 0; i < FUZZ_MAX_RECORDS && sa->state == IKE_SA_ESTABLISHED; i++) {
        uint8_t ctl, first;
        buf_reader body;
        if (!buf_get_u8(&in, &ctl) || !buf_get_u8(&in, &first) || !buf_get_u16_length_prefixed(&in, &body))
            break;
        if (ctl & 4)
            ike_sa_rekey_child(sa, sa->child_spi_in);
        if (ctl & 8)
            ike_sa_rekey_ike(sa);
        ike_chain chain;
        ike_diag d;
        ike_diag_clear(&d);
        if (ike_inner_chain_parse(body.p, body.len, first, &chain, &d) == 0) {
            ike_header hdr;
            memset(&hdr, 0, sizeof(hdr));
            switch (ctl & 3) {
            case 0:
                hdr.exchange = IKE_EXCH_CREATE_CHILD_SA;
                hdr.message_id = sa->peer_msg_id++;
                ike_rekey_process_request(sa, &hdr, &chain);
                break;
            case 1:
            case 2:
                if (sa->req.task == ((ctl & 3) == 1 ? IKE_TASK_REKEY_CHILD : IKE_TASK_REKEY_IKE)) {
                    const ike_task_ops *ops = (ctl & 3) == 1 ? &ike_task_rekey_child : &ike_task_rekey_ike;
                    ike_sa_request_done(sa);
                    sa->next_msg_id++;
                    ops->process(sa, NULL, &chain);
                }
                break;
            default:
                hdr.exchange = IKE_EXCH_INFORMATIONAL;
                hdr.message_id = sa->peer_msg_id++;
                ike_info_process_request(sa, &hdr, &chain);
                break;
            }
            ike_task_run(sa);
        }
        now_ms += (uint64_t)(ctl >> 4) * 1000;
        core_loop_run_once(&loop, 0);
        if (st.n_down > 1)
            abort();
    }
    ike_sa_free(sa);
    core_log_destroy(&log);
    core_loop_destroy(&loop);
    return 0;
}
