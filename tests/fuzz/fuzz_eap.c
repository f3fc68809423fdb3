/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer target for the EAP peer (lib/ike/eap.h): the parser and the
 * state machine together.
 *
 * Input: byte 0 picks the method (bit 0: MD5, else MSCHAPv2); then a run of
 * u16-length-prefixed EAP packets, fed one after another to one peer, as a
 * gateway would send them.
 *
 * Invariants checked (abort on violation):
 *  - a response fits the buffer, is an EAP Response whose length field is
 *    its size, and answers the request's identifier;
 *  - after an error the peer is FAILED and refuses every later packet;
 *  - MSCHAPv2 never finishes: finishing needs an authenticator response
 *    computed from our random peer challenge and the password, which the
 *    input cannot know (a DONE here would be the CVE-2021-45079 class);
 *  - MD5 finishes only through its own response, never straight from START.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "ike/eap.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    eap_method m = (data[0] & 1) ? EAP_METHOD_MD5 : EAP_METHOD_MSCHAPV2;
    eap_peer *p = NULL;
    if (eap_peer_new(m, "dev1", "fuzz-password", 13, &p) != 0)
        abort();
    buf_reader r = buf_reader_make(data + 1, size - 1);
    buf_reader pkt;
    bool failed = false;
    uint8_t out[EAP_MAX_PACKET];
    char err[256];
    while (buf_get_u16_length_prefixed(&r, &pkt)) {
        eap_peer_state before = eap_peer_get_state(p);
        size_t out_len = 0;
        int res = eap_peer_process(p, pkt.p, pkt.len, out, sizeof(out), &out_len, err, sizeof(err));
        if (failed && res >= 0)
            abort(); /* a failed peer accepted something */
        if (res < 0) {
            if (eap_peer_get_state(p) != EAP_PEER_FAILED)
                abort();
            failed = true;
            continue;
        }
        if (res == EAP_STEP_SEND) {
            if (out_len < 5 || out_len > sizeof(out) || out[0] != 2 || buf_load_be16(out + 2) != out_len ||
                pkt.len < 2 || out[1] != pkt.p[1])
                abort();
        } else if (res == EAP_STEP_DONE) {
            if (m == EAP_METHOD_MSCHAPV2 || before != EAP_PEER_METHOD)
                abort();
            const uint8_t *msk;
            size_t msk_len;
            eap_peer_msk(p, &msk, &msk_len);
            if (msk_len != 0)
                abort(); /* MD5 has no keys */
        } else {
            abort();
        }
    }
    eap_peer_free(p);
    return 0;
}
