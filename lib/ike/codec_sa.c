/* SPDX-License-Identifier: Apache-2.0 */
/*
 * SA payload (RFC 7296 §3.3): proposals, transforms, the Key Length
 * attribute. Built from lib/profile/proposal.h; parsed either completely
 * (every proposal) or as a responder's choice (exactly one clean proposal).
 */
#include "ike/codec.h"

#include <string.h>

#include <m2mvpn/m2mvpn.h>

#define SYNTAX(diag, ...) \
    ike_diag_set((diag), M2MVPN_E_PROTOCOL, IKE_N_INVALID_SYNTAX, IKE_PL_SA, __VA_ARGS__)

#define PROPOSAL_MORE 2     /* "Last Substruc" of a proposal that is not last */
#define TRANSFORM_MORE 3    /* ... of a transform that is not last */
#define ATTR_TV 0x8000      /* attribute format bit: type/value, 2-byte value */

bool ike_encr_has_key_length(uint16_t id)
{
    switch (id) {
    case 12: /* AES-CBC */
    case 13: /* AES-CTR */
    case 14: case 15: case 16: /* AES-CCM 8/12/16 */
    case 18: case 19: case 20: /* AES-GCM 8/12/16 */
    case 21: /* NULL_AUTH_AES_GMAC */
    case 23: case 24: case 25: case 26: case 27: /* Camellia CBC/CTR/CCM */
        return true;
    default:
        return false;
    }
}

static int parse_attributes(buf_reader attrs, ike_transform *t, ike_diag *diag)
{
    while (buf_remaining(&attrs)) {
        uint16_t type_field, value;
        if (!buf_get_u16(&attrs, &type_field))
            return SYNTAX(diag, "SA: truncated transform attribute");
        if (type_field & ATTR_TV) {
            if (!buf_get_u16(&attrs, &value))
                return SYNTAX(diag, "SA: truncated transform attribute value");
            /* One Key Length, on ENCR, not 0; anything else is an attribute
             * we do not accept in a choice (a 0 would read as "absent"). */
            if ((type_field & 0x7fff) == IKE_ATTR_KEY_LENGTH && t->type == IKE_TT_ENCR &&
                t->key_bits == 0 && value != 0)
                t->key_bits = value;
            else
                t->unknown_attr = true;
        } else {
            buf_reader v;
            if (!buf_get_u16_length_prefixed(&attrs, &v))
                return SYNTAX(diag, "SA: transform attribute length exceeds the transform");
            t->unknown_attr = true;
        }
    }
    return 0;
}

static int parse_transform(buf_reader *prop, bool last, ike_transform *t, ike_diag *diag)
{
    uint8_t more, reserved, type, reserved2;
    uint16_t len, id;
    buf_reader c = *prop, tr, attrs;

    if (!buf_get_u8(&c, &more) || !buf_get_u8(&c, &reserved) || !buf_get_u16(&c, &len))
        return SYNTAX(diag, "SA: truncated transform header");
    if (len < 8 || !buf_get_view(&c, len - 4, &tr))
        return SYNTAX(diag, "SA: transform length %u invalid (%zu left)", len, buf_remaining(&c));
    if (more != (last ? 0 : TRANSFORM_MORE))
        return SYNTAX(diag, "SA: transform 'last substructure' %u does not match the count", more);
    buf_get_u8(&tr, &type);
    buf_get_u8(&tr, &reserved2);
    buf_get_u16(&tr, &id);
    attrs = tr;
    memset(t, 0, sizeof(*t));
    t->type = type;
    t->id = id;
    int rc = parse_attributes(attrs, t, diag);
    if (rc < 0)
        return rc;
    *prop = c;
    return 0;
}

static int parse_proposal(buf_reader *body, ike_sa_view *sa, ike_diag *diag)
{
    uint8_t more, reserved, num, proto, spi_len, n_tr;
    uint16_t len;
    buf_reader c = *body, prop;

    if (sa->n_prop == IKE_MAX_PROPOSALS)
        return SYNTAX(diag, "SA: more than %d proposals", IKE_MAX_PROPOSALS);
    if (!buf_get_u8(&c, &more) || !buf_get_u8(&c, &reserved) || !buf_get_u16(&c, &len))
        return SYNTAX(diag, "SA: truncated proposal header");
    if (len < 8 || !buf_get_view(&c, len - 4, &prop))
        return SYNTAX(diag, "SA: proposal length %u invalid (%zu left)", len, buf_remaining(&c));
    if (more != (buf_remaining(&c) ? PROPOSAL_MORE : 0))
        return SYNTAX(diag, "SA: proposal 'last substructure' %u does not match the length", more);
    buf_get_u8(&prop, &num);
    buf_get_u8(&prop, &proto);
    buf_get_u8(&prop, &spi_len);
    buf_get_u8(&prop, &n_tr);
    if (spi_len != 0 && spi_len != 4 && spi_len != 8)
        return SYNTAX(diag, "SA: proposal %u: SPI size %u is not 0, 4 or 8", num, spi_len);

    ike_proposal_view *p = &sa->prop[sa->n_prop];
    memset(p, 0, sizeof(*p));
    if (!buf_get_bytes(&prop, p->spi, spi_len))
        return SYNTAX(diag, "SA: proposal %u: SPI exceeds the proposal", num);
    if (n_tr == 0)
        return SYNTAX(diag, "SA: proposal %u has no transforms", num);
    if (n_tr > IKE_MAX_TRANSFORMS - sa->n_tr)
        return SYNTAX(diag, "SA: more than %d transforms", IKE_MAX_TRANSFORMS);
    p->number = num;
    p->protocol = proto;
    p->spi_len = spi_len;
    p->first_transform = sa->n_tr;
    for (unsigned i = 0; i < n_tr; i++) {
        int rc = parse_transform(&prop, i + 1 == n_tr, &sa->tr[sa->n_tr + i], diag);
        if (rc < 0)
            return rc;
    }
    if (buf_remaining(&prop))
        return SYNTAX(diag, "SA: proposal %u: %zu bytes after its %u transforms",
                      num, buf_remaining(&prop), n_tr);
    p->n_transforms = n_tr;
    sa->n_tr += n_tr;
    sa->n_prop++;
    *body = c;
    return 0;
}

int ike_sa_parse(buf_reader body, ike_sa_view *ret, ike_diag *diag)
{
    ret->n_prop = 0;
    ret->n_tr = 0;
    if (body.len == 0)
        return SYNTAX(diag, "SA: no proposals");
    while (buf_remaining(&body)) {
        int rc = parse_proposal(&body, ret, diag);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int ike_sa_parse_choice(buf_reader body, ike_sa_choice *ret, ike_diag *diag)
{
    ike_sa_view sa;
    int rc = ike_sa_parse(body, &sa, diag);
    if (rc < 0)
        return rc;
    if (sa.n_prop != 1)
        return SYNTAX(diag, "SA: the responder chose %zu proposals, must be exactly 1", sa.n_prop);

    const ike_proposal_view *p = &sa.prop[0];
    ike_sa_choice c;
    memset(&c, 0, sizeof(c));
    c.number = p->number;
    c.protocol = p->protocol;
    c.spi_len = p->spi_len;
    memcpy(c.spi, p->spi, sizeof(c.spi));
    for (size_t i = 0; i < p->n_transforms; i++) {
        const ike_transform *t = &sa.tr[p->first_transform + i];
        if (t->type < IKE_TT_ENCR || t->type > IKE_TT_MAX)
            return SYNTAX(diag, "SA: chosen proposal has unknown transform type %u", t->type);
        if (ike_sa_choice_has(&c, t->type))
            return SYNTAX(diag, "SA: chosen proposal has more than one %s transform",
                          ike_transform_type_name(t->type));
        if (t->unknown_attr)
            return SYNTAX(diag, "SA: chosen %s transform %u has an unknown attribute",
                          ike_transform_type_name(t->type), t->id);
        c.present |= (uint8_t)(1u << t->type);
        c.id[t->type] = t->id;
        if (t->type == IKE_TT_ENCR)
            c.encr_key_bits = t->key_bits;
    }
    *ret = c;
    return 0;
}

/* ---------------------------------------------------------------- build */

typedef struct transform_writer {
    buf_writer *w;
    size_t last_at;         /* start of the previous transform, SIZE_MAX if none */
    unsigned count;
} transform_writer;

static void put_transform(transform_writer *tw, uint8_t type, uint16_t id, uint16_t key_bits)
{
    buf_writer *w = tw->w;
    if (!buf_writer_ok(w))
        return;
    size_t at = buf_writer_len(w);
    bool attr = type == IKE_TT_ENCR && key_bits && ike_encr_has_key_length(id);
    buf_put_u8(w, TRANSFORM_MORE);  /* the last one is patched to 0 */
    buf_put_u8(w, 0);
    buf_put_u16(w, attr ? 12 : 8);
    buf_put_u8(w, type);
    buf_put_u8(w, 0);
    buf_put_u16(w, id);
    if (attr) {
        buf_put_u16(w, ATTR_TV | IKE_ATTR_KEY_LENGTH);
        buf_put_u16(w, key_bits);
    }
    tw->last_at = at;
    tw->count++;
}

/* Proposal header; returns its offset. */
static size_t begin_proposal(buf_writer *w, uint8_t number, uint8_t protocol,
                             const uint8_t *spi, size_t spi_len)
{
    size_t at = buf_writer_len(w);
    buf_put_u8(w, PROPOSAL_MORE);   /* the last one is patched to 0 */
    buf_put_u8(w, 0);
    buf_put_u16(w, 0);
    buf_put_u8(w, number);
    buf_put_u8(w, protocol);
    buf_put_u8(w, (uint8_t)spi_len);
    buf_put_u8(w, 0);               /* number of transforms, patched */
    buf_put_bytes(w, spi, spi_len);
    return at;
}

static void end_proposal(buf_writer *w, size_t at, transform_writer *tw, bool last)
{
    if (!buf_writer_ok(w))
        return;
    if (tw->count == 0 || tw->count > 255) {
        w->err = true;
        return;
    }
    w->p[tw->last_at] = 0;
    w->p[at] = last ? 0 : PROPOSAL_MORE;
    w->p[at + 7] = (uint8_t)tw->count;
    buf_patch_u16(w, at + 2, (uint16_t)(buf_writer_len(w) - at));
}

void ike_build_sa(ike_chain_writer *cw, const proposal *props, size_t n,
                  uint8_t protocol, const uint8_t *spi, size_t spi_len)
{
    buf_writer *w = cw->w;
    if (n == 0 || n > 255 || (spi_len != 0 && spi_len != 4 && spi_len != 8)) {
        w->err = true;
        return;
    }
    ike_payload_begin(cw, IKE_PL_SA, false);
    for (size_t i = 0; i < n; i++) {
        const proposal *p = &props[i];
        transform_writer tw = { w, SIZE_MAX, 0 };
        size_t at = begin_proposal(w, (uint8_t)(i + 1), protocol, spi, spi_len);
        for (size_t k = 0; k < p->n_encr && k < PROPOSAL_MAX_ALGS; k++)
            put_transform(&tw, IKE_TT_ENCR, p->encr[k].id, p->encr[k].key_bits);
        if (protocol == IKE_PROTO_IKE)
            for (size_t k = 0; k < p->n_prf && k < PROPOSAL_MAX_ALGS; k++)
                put_transform(&tw, IKE_TT_PRF, p->prf[k], 0);
        for (size_t k = 0; k < p->n_integ && k < PROPOSAL_MAX_ALGS; k++)
            put_transform(&tw, IKE_TT_INTEG, p->integ[k], 0);
        for (size_t k = 0; k < p->n_ke && k < PROPOSAL_MAX_ALGS; k++)
            put_transform(&tw, IKE_TT_KE, p->ke[k], 0);
        if (protocol != IKE_PROTO_IKE) {
            /* RFC 7296 §3.3.3: ESP and AH proposals always state ESN. */
            if (p->n_esn == 0)
                put_transform(&tw, IKE_TT_ESN, ESN_NO, 0);
            for (size_t k = 0; k < p->n_esn && k < 2; k++)
                put_transform(&tw, IKE_TT_ESN, p->esn[k], 0);
        }
        end_proposal(w, at, &tw, i + 1 == n);
    }
    ike_payload_end(cw);
}

void ike_build_sa_choice(ike_chain_writer *cw, const ike_sa_choice *c)
{
    buf_writer *w = cw->w;
    if (c->spi_len != 0 && c->spi_len != 4 && c->spi_len != 8) {
        w->err = true;
        return;
    }
    ike_payload_begin(cw, IKE_PL_SA, false);
    transform_writer tw = { w, SIZE_MAX, 0 };
    size_t at = begin_proposal(w, c->number, c->protocol, c->spi, c->spi_len);
    for (unsigned tt = IKE_TT_ENCR; tt <= IKE_TT_MAX; tt++)
        if (ike_sa_choice_has(c, tt))
            put_transform(&tw, (uint8_t)tt, c->id[tt], tt == IKE_TT_ENCR ? c->encr_key_bits : 0);
    end_proposal(w, at, &tw, true);
    ike_payload_end(cw);
}
