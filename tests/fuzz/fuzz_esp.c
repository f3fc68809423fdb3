/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer target for ESP inbound processing. The first byte picks a mode,
 * the second the cipher and ESN:
 *   0: the rest is a received ESP packet, decapsulated as is (length, SPI,
 *      replay and integrity checks on hostile input);
 *   1: the rest is an inner packet, encapsulated by a peer SA and
 *      decapsulated again: the round trip must give back the same bytes
 *      whenever the inner packet is one the SA accepts (an oracle, not just
 *      "no crash");
 *   2: the rest is a list of 32-bit sequence numbers for the replay window:
 *      a number just accepted must never be accepted again;
 *   3: the rest is a TUN super-packet cut by the TSO segmenter (MSS from the
 *      second byte): every segment must carry a valid TCP checksum, and the
 *      segments coalesced again must give the original payload back;
 *   4: the rest is a run of received packets (2-byte length prefixes) fed to
 *      the TCP coalescer: the output must stay within its buffer.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "esp/esp.h"
#include "esp/esp_offload.h"
#include "profile/proposal.h"

static const struct { uint16_t encr, bits, integ; } ciphers[] = {
    { ENCR_AES_GCM_16, 128, 0 },
    { ENCR_AES_GCM_16, 256, 0 },
    { ENCR_CHACHA20_POLY1305, 256, 0 },
    { ENCR_AES_CBC, 128, AUTH_HMAC_SHA2_256_128 },
    { ENCR_AES_CBC, 256, AUTH_HMAC_SHA2_384_192 },
    { ENCR_AES_CBC, 256, AUTH_HMAC_SHA2_512_256 },
};
#define N_CIPHERS (sizeof(ciphers) / sizeof(ciphers[0]))

static int make_sa(unsigned which, bool esn, bool initiator, esp_sa **ret)
{
    esp_sa_config c = {0};
    uint8_t keymat[2 * 96];
    for (size_t i = 0; i < sizeof(keymat); i++)
        keymat[i] = (uint8_t)(i * 13 + 1);
    c.encr_id = ciphers[which].encr;
    c.encr_key_bits = ciphers[which].bits;
    c.integ_id = ciphers[which].integ;
    c.esn = esn;
    c.replay_window = 128;
    c.spi_in = initiator ? 0x1001 : 0x2002;
    c.spi_out = initiator ? 0x2002 : 0x1001;
    size_t per = esp_keymat_len(c.encr_id, c.encr_key_bits, c.integ_id);
    if (esp_keys_from_keymat(&c, keymat, 2 * per, initiator) < 0)
        abort();
    return esp_sa_new(&c, ret, NULL, 0);
}

static void fuzz_raw(esp_sa *sa, const uint8_t *data, size_t size)
{
    static uint8_t pkt[ESP_MAX_PACKET];
    if (size > sizeof(pkt))
        size = sizeof(pkt);
    memcpy(pkt, data, size);
    /* Give the SPI a fair chance to match so the later checks run. */
    if (size >= 4 && data[0] & 1)
        buf_store_be32(pkt, esp_sa_spi_in(sa));
    uint8_t *inner, nh;
    size_t inner_len;
    esp_drop_reason why;
    if (esp_sa_decap(sa, pkt, size, &inner, &inner_len, &nh, &why) == 0) {
        /* A forged packet must never authenticate. */
        abort();
    }
}

static void fuzz_roundtrip(esp_sa *rx, esp_sa *tx, const uint8_t *data, size_t size)
{
    static uint8_t out[ESP_MAX_PACKET + 128];
    if (size == 0 || size > 4000)
        return;
    uint8_t nh = (data[0] >> 4) == 6 ? ESP_NH_IPV6 : ESP_NH_IPV4;
    size_t len;
    esp_drop_reason why;
    if (esp_sa_encap(tx, data, size, nh, out, sizeof(out), &len, &why) < 0)
        abort();
    uint8_t *inner, got_nh;
    size_t inner_len;
    int rc = esp_sa_decap(rx, out, len, &inner, &inner_len, &got_nh, &why);
    bool acceptable = (data[0] >> 4) == 4 || (data[0] >> 4) == 6;
    if (acceptable != (rc == 0))
        abort();
    if (rc == 0 && (inner_len != size || got_nh != nh || memcmp(inner, data, size) != 0))
        abort();
}

static void fuzz_replay(const uint8_t *data, size_t size, bool esn)
{
    esp_replay_window w;
    if (esp_replay_init(&w, 64 + (data[0] % 4) * 64, esn) < 0)
        abort();
    for (size_t i = 1; i + 4 <= size; i += 4) {
        uint32_t lo = buf_load_be32(data + i);
        uint64_t full;
        if (esp_replay_check(&w, lo, &full) && esp_replay_advance(&w, full)) {
            uint64_t again;
            if (esp_replay_check(&w, lo, &again) && again == full)
                abort();
        }
    }
    esp_replay_destroy(&w);
}

static bool tcp_sum_ok(const uint8_t *p, size_t len)
{
    bool v6 = (p[0] >> 4) == 6;
    size_t ip = v6 ? 40 : (p[0] & 15u) * 4u;
    uint32_t s = v6 ? esp_csum_add(0, p + 8, 32) : esp_csum_add(0, p + 12, 8);
    s += 6u + (uint32_t)(len - ip);
    return esp_csum_fold(esp_csum_add(s, p + ip, len - ip)) == 0xffff;
}

static uint8_t seg_mem[128][2048];
static uint8_t gro_mem[ESP_VNET_HDR_LEN + ESP_GSO_MAX];

static void fuzz_tso(const uint8_t *data, size_t size, uint16_t mss)
{
    uint8_t *outs[128];
    size_t lens[128];
    for (int i = 0; i < 128; i++)
        outs[i] = seg_mem[i];
    size_t n = esp_tso_segment(data, size, mss, outs, sizeof(seg_mem[0]), lens, 128);
    esp_gro g = { .buf = gro_mem };
    size_t payload = 0;
    for (size_t i = 0; i < n; i++) {
        if (lens[i] > sizeof(seg_mem[0]) || !tcp_sum_ok(outs[i], lens[i]))
            abort();
        if (i == 0)
            esp_gro_start(&g, outs[0], lens[0]);
        else if (!esp_gro_append(&g, outs[i], lens[i]))
            return; /* e.g. flags that end a run: fine, no oracle then */
        (void)payload;
    }
    if (n > 0 && esp_gro_finish(&g) != ESP_VNET_HDR_LEN + size)
        abort(); /* all segments coalesced: exactly the original length */
}

static void fuzz_gro(const uint8_t *data, size_t size)
{
    esp_gro g = { .buf = gro_mem };
    static uint8_t pkt[4096];
    while (size >= 2) {
        size_t len = ((size_t)data[0] << 8 | data[1]) % sizeof(pkt);
        data += 2;
        size -= 2;
        if (len > size)
            len = size;
        memcpy(pkt, data, len);
        data += len;
        size -= len;
        if (len == 0)
            continue;
        if (!esp_gro_append(&g, pkt, len)) {
            if (g.len && esp_gro_finish(&g) > sizeof(gro_mem))
                abort();
            esp_gro_start(&g, pkt, len);
        }
    }
    if (g.len && esp_gro_finish(&g) > sizeof(gro_mem))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    if (data[0] % 5 == 3) {
        fuzz_tso(data + 2, size - 2, (uint16_t)(data[1] * 8 + 64));
        return 0;
    }
    if (data[0] % 5 == 4) {
        fuzz_gro(data + 2, size - 2);
        return 0;
    }
    unsigned mode = data[0] % 3, which = (data[1] & 0x7f) % N_CIPHERS;
    bool esn = data[1] & 0x80;
    data += 2;
    size -= 2;
    if (mode == 2) {
        if (size)
            fuzz_replay(data, size, esn);
        return 0;
    }
    esp_sa *rx = NULL, *tx = NULL;
    if (make_sa(which, esn, true, &rx) < 0 || make_sa(which, esn, false, &tx) < 0)
        abort();
    if (mode == 0)
        fuzz_raw(rx, data, size);
    else
        fuzz_roundtrip(rx, tx, data, size);
    esp_sa_free(rx);
    esp_sa_free(tx);
    return 0;
}
