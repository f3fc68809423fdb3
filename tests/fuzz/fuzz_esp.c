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
 *      a number just accepted must never be accepted again.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "esp/esp.h"
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
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
