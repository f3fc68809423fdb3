/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Anti-replay window (RFC 4303 §3.4.3, ESN inference per Appendix A2.2).
 * A bitmap ring of `size` bits indexed by seq % size; `top` is the highest
 * authenticated sequence number. Check and advance are split so the caller
 * can put the integrity check between them.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <m2mvpn/m2mvpn.h>

#include "esp.h"

/* Window used only to infer ESN high bits when the replay check is off. */
#define ESP_REPLAY_INFER_WINDOW 1024u

int esp_replay_init(esp_replay_window *w, uint32_t size, bool esn)
{
    if (!w || size > ESP_REPLAY_MAX)
        return M2MVPN_E_INVAL;
    memset(w, 0, sizeof(*w));
    w->esn = esn;
    if (size == 0)
        return 0;
    w->size = (size + 63u) & ~63u;
    w->bitmap = calloc(w->size / 64u, sizeof(uint64_t));
    if (!w->bitmap)
        return M2MVPN_E_NOMEM;
    return 0;
}

void esp_replay_destroy(esp_replay_window *w)
{
    if (!w)
        return;
    free(w->bitmap);
    w->bitmap = NULL;
    w->size = 0;
}

/* RFC 4303 Appendix A2.2: guess the high 32 bits from the window position. */
static uint64_t infer_esn(uint64_t top, uint32_t window, uint32_t seq_lo)
{
    uint32_t tl = (uint32_t)top;
    uint32_t th = (uint32_t)(top >> 32);
    uint32_t bottom_lo = tl - window + 1u; /* wraps in case B, on purpose */
    uint32_t seq_hi;

    if (tl >= window - 1u) {
        /* Case A: the window lies within one 2^32 subspace. */
        seq_hi = seq_lo >= bottom_lo ? th : th + 1u;
    } else {
        /* Case B: the window spans two subspaces. */
        if (seq_lo >= bottom_lo)
            seq_hi = th == 0 ? 0 : th - 1u; /* nothing lies below subspace 0 */
        else
            seq_hi = th;
    }
    return ((uint64_t)seq_hi << 32) | seq_lo;
}

static bool bit_is_set(const esp_replay_window *w, uint64_t seq)
{
    uint64_t idx = seq % w->size;
    return (w->bitmap[idx / 64u] >> (idx % 64u)) & 1u;
}

bool esp_replay_check(const esp_replay_window *w, uint32_t seq_lo, uint64_t *seq_full)
{
    uint64_t seq;

    if (w->esn)
        seq = infer_esn(w->top, w->size ? w->size : ESP_REPLAY_INFER_WINDOW, seq_lo);
    else
        seq = seq_lo;
    if (seq == 0) /* the first packet of an SA has number 1 */
        return false;
    *seq_full = seq;
    if (w->size == 0 || seq > w->top)
        return true;
    if (w->top - seq >= w->size)
        return false;
    return !bit_is_set(w, seq);
}

bool esp_replay_advance(esp_replay_window *w, uint64_t seq)
{
    if (seq == 0)
        return false;
    if (w->size == 0) {
        if (seq > w->top)
            w->top = seq;
        return true;
    }
    if (seq > w->top) {
        uint64_t diff = seq - w->top;
        if (diff >= w->size) {
            memset(w->bitmap, 0, (w->size / 64u) * sizeof(uint64_t));
        } else {
            /* Clear the slots of top+1 .. seq (they held numbers that fell out). */
            uint64_t s = w->top + 1u;
            while (s <= seq) {
                uint64_t idx = s % w->size;
                if (idx % 64u == 0 && seq - s >= 63u) {
                    w->bitmap[idx / 64u] = 0;
                    s += 64u;
                } else {
                    w->bitmap[idx / 64u] &= ~((uint64_t)1 << (idx % 64u));
                    s++;
                }
            }
        }
        w->top = seq;
    } else {
        if (w->top - seq >= w->size || bit_is_set(w, seq))
            return false;
    }
    uint64_t idx = seq % w->size;
    w->bitmap[idx / 64u] |= (uint64_t)1 << (idx % 64u);
    return true;
}
