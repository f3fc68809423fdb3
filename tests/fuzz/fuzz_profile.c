/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer target: any bytes through the profile parser. A success must
 * yield a usable set (every profile findable by its name, proposals that
 * format and parse back); a failure must leave *ret alone and say why.
 */
#include <m2mvpn/m2mvpn.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "profile/profile.h"
#include "profile/proposal.h"

static void check_set(const profile_set *set)
{
    if (!set || set->n == 0)
        abort();
    for (size_t i = 0; i < set->n; i++) {
        const profile *p = &set->items[i];
        if (profile_set_find(set, p->name) != p || p->n_gateways == 0 || !p->remote_id)
            abort();
        for (size_t j = 0; j < p->ike.n_proposals; j++) {
            char text[256];
            proposal back;
            proposal_format(&p->ike.proposals[j], PROPOSAL_IKE, text, sizeof(text));
            if (proposal_parse(text, PROPOSAL_IKE, &back, NULL, 0) != 0)
                abort();
        }
        for (size_t j = 0; j < p->esp.n_proposals; j++) {
            char text[256];
            proposal back;
            proposal_format(&p->esp.proposals[j], PROPOSAL_ESP, text, sizeof(text));
            if (proposal_parse(text, PROPOSAL_ESP, &back, NULL, 0) != 0)
                abort();
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    profile_set sentinel;
    profile_set *set = &sentinel;
    char err[256];
    err[0] = '\0';
    int r = profile_set_parse((const char *)data, size, "/fuzz", &set, err, sizeof(err));
    if (r == 0) {
        check_set(set);
        profile_set_free(set);
    } else if (set != &sentinel || err[0] == '\0' || r >= 0) {
        abort();
    }

    /* The same bytes as one proposal string of each kind. */
    char text[300];
    size_t n = size < sizeof(text) - 1 ? size : sizeof(text) - 1;
    memcpy(text, data, n);
    text[n] = '\0';
    proposal p;
    for (int kind = PROPOSAL_IKE; kind <= PROPOSAL_ESP; kind++)
        if (proposal_parse(text, (proposal_kind)kind, &p, err, sizeof(err)) == 0) {
            char out[256];
            proposal back;
            proposal_format(&p, (proposal_kind)kind, out, sizeof(out));
            if (proposal_parse(out, (proposal_kind)kind, &back, NULL, 0) != 0)
                abort();
        }
    return 0;
}
