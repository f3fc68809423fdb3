/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The simple typed payloads (RFC 7296 §3.4-3.12, §3.16): KE, Nonce, Notify,
 * Delete, Vendor ID, IDi/IDr, CERT, CERTREQ, AUTH, EAP. Each parser gets the
 * body of a payload whose generic header ike_chain_parse() already checked.
 */
#include "ike/codec.h"

#include <m2mvpn/m2mvpn.h>

#define SYNTAX(diag, pl, ...) \
    ike_diag_set((diag), M2MVPN_E_PROTOCOL, IKE_N_INVALID_SYNTAX, (pl), __VA_ARGS__)

/* ------------------------------------------------------------------ KE */

int ike_ke_parse(buf_reader body, ike_ke *ret, ike_diag *diag)
{
    uint16_t group, reserved;
    if (!buf_get_u16(&body, &group) || !buf_get_u16(&body, &reserved))
        return SYNTAX(diag, IKE_PL_KE, "KE: %zu bytes, need at least 4", body.len);
    if (buf_remaining(&body) == 0)
        return SYNTAX(diag, IKE_PL_KE, "KE: group %u without key exchange data", group);
    ret->group = group;
    ret->data = body;
    return 0;
}

void ike_build_ke(ike_chain_writer *cw, uint16_t group, const void *data, size_t len)
{
    ike_payload_begin(cw, IKE_PL_KE, false);
    buf_put_u16(cw->w, group);
    buf_put_u16(cw->w, 0);
    buf_put_bytes(cw->w, data, len);
    ike_payload_end(cw);
}

/* --------------------------------------------------------------- Nonce */

int ike_nonce_parse(buf_reader body, buf_reader *ret, ike_diag *diag)
{
    if (body.len < IKE_NONCE_MIN || body.len > IKE_NONCE_MAX)
        return SYNTAX(diag, IKE_PL_NONCE, "Nonce: %zu bytes, must be %d..%d",
                      body.len, IKE_NONCE_MIN, IKE_NONCE_MAX);
    *ret = body;
    return 0;
}

void ike_build_nonce(ike_chain_writer *cw, const void *nonce, size_t len)
{
    if (len < IKE_NONCE_MIN || len > IKE_NONCE_MAX) {
        cw->w->err = true;
        return;
    }
    ike_build_raw(cw, IKE_PL_NONCE, false, nonce, len);
}

/* -------------------------------------------------------------- Notify */

int ike_notify_parse(buf_reader body, ike_notify *ret, ike_diag *diag)
{
    uint8_t proto, spi_len;
    uint16_t type;
    if (!buf_get_u8(&body, &proto) || !buf_get_u8(&body, &spi_len) ||
        !buf_get_u16(&body, &type))
        return SYNTAX(diag, IKE_PL_NOTIFY, "Notify: %zu bytes, need at least 4", body.len);
    if (spi_len != 0 && spi_len != 4 && spi_len != 8)
        return SYNTAX(diag, IKE_PL_NOTIFY, "Notify %u: SPI size %u is not 0, 4 or 8",
                      type, spi_len);
    if (!buf_get_view(&body, spi_len, &ret->spi))
        return SYNTAX(diag, IKE_PL_NOTIFY, "Notify %u: SPI of %u bytes exceeds remaining %zu",
                      type, spi_len, body.len);
    ret->protocol = proto;
    ret->type = type;
    ret->data = body;
    return 0;
}

void ike_build_notify(ike_chain_writer *cw, uint8_t protocol, uint16_t type,
                      const void *spi, size_t spi_len, const void *data, size_t data_len)
{
    if (spi_len != 0 && spi_len != 4 && spi_len != 8) {
        cw->w->err = true;
        return;
    }
    ike_payload_begin(cw, IKE_PL_NOTIFY, false);
    buf_put_u8(cw->w, protocol);
    buf_put_u8(cw->w, (uint8_t)spi_len);
    buf_put_u16(cw->w, type);
    buf_put_bytes(cw->w, spi, spi_len);
    buf_put_bytes(cw->w, data, data_len);
    ike_payload_end(cw);
}

int ike_chain_find_notify(const ike_chain *c, uint16_t type, ike_notify *ret, ike_diag *diag)
{
    for (const ike_payload *p = ike_chain_find(c, IKE_PL_NOTIFY, NULL); p;
         p = ike_chain_find(c, IKE_PL_NOTIFY, p)) {
        ike_notify n;
        int rc = ike_notify_parse(p->body, &n, diag);
        if (rc < 0)
            return rc;
        if (n.type == type) {
            *ret = n;
            return 0;
        }
    }
    return 1;
}

/* -------------------------------------------------------------- Delete */

int ike_delete_parse(buf_reader body, ike_delete *ret, ike_diag *diag)
{
    uint8_t proto, spi_len;
    uint16_t n_spi;
    if (!buf_get_u8(&body, &proto) || !buf_get_u8(&body, &spi_len) ||
        !buf_get_u16(&body, &n_spi))
        return SYNTAX(diag, IKE_PL_DELETE, "Delete: %zu bytes, need at least 4", body.len);
    if (proto == IKE_PROTO_IKE) {
        /* RFC 7296 §3.11: the IKE SA is named by the header SPIs. */
        if (spi_len != 0 || n_spi != 0 || body.len != 0)
            return SYNTAX(diag, IKE_PL_DELETE, "Delete IKE: must carry no SPIs");
    } else if (proto == IKE_PROTO_ESP || proto == IKE_PROTO_AH) {
        if (spi_len != 4)
            return SYNTAX(diag, IKE_PL_DELETE, "Delete %s: SPI size %u is not 4",
                          ike_protocol_name(proto), spi_len);
        if ((size_t)n_spi * spi_len != body.len)
            return SYNTAX(diag, IKE_PL_DELETE, "Delete: %u SPIs of %u bytes do not match %zu bytes",
                          n_spi, spi_len, body.len);
    } else {
        return SYNTAX(diag, IKE_PL_DELETE, "Delete: unknown protocol %u", proto);
    }
    ret->protocol = proto;
    ret->spi_len = spi_len;
    ret->n_spi = n_spi;
    ret->spis = body;
    return 0;
}

void ike_build_delete(ike_chain_writer *cw, uint8_t protocol, uint8_t spi_len,
                      const void *spis, uint16_t n_spi)
{
    ike_payload_begin(cw, IKE_PL_DELETE, false);
    buf_put_u8(cw->w, protocol);
    buf_put_u8(cw->w, spi_len);
    buf_put_u16(cw->w, n_spi);
    buf_put_bytes(cw->w, spis, (size_t)spi_len * n_spi);
    ike_payload_end(cw);
}

/* ------------------------------------------------------------------ ID */

int ike_id_parse(buf_reader body, ike_id *ret, ike_diag *diag)
{
    uint8_t type;
    if (!buf_get_u8(&body, &type) || !buf_skip(&body, 3))
        return SYNTAX(diag, IKE_PL_IDI, "ID: %zu bytes, need at least 4", body.len);
    if (body.len == 0)
        return SYNTAX(diag, IKE_PL_IDI, "ID type %u: no identification data", type);
    if (type == IKE_ID_IPV4_ADDR && body.len != 4)
        return SYNTAX(diag, IKE_PL_IDI, "ID_IPV4_ADDR: %zu bytes, must be 4", body.len);
    if (type == IKE_ID_IPV6_ADDR && body.len != 16)
        return SYNTAX(diag, IKE_PL_IDI, "ID_IPV6_ADDR: %zu bytes, must be 16", body.len);
    ret->type = type;
    ret->data = body;
    return 0;
}

void ike_build_id(ike_chain_writer *cw, uint8_t pl_type, uint8_t id_type,
                  const void *data, size_t len)
{
    if (pl_type != IKE_PL_IDI && pl_type != IKE_PL_IDR) {
        cw->w->err = true;
        return;
    }
    ike_payload_begin(cw, pl_type, false);
    buf_put_u8(cw->w, id_type);
    buf_put_zeros(cw->w, 3);
    buf_put_bytes(cw->w, data, len);
    ike_payload_end(cw);
}

/* ------------------------------------------------------- CERT, CERTREQ */

int ike_cert_parse(buf_reader body, ike_cert *ret, ike_diag *diag)
{
    uint8_t enc;
    if (!buf_get_u8(&body, &enc))
        return SYNTAX(diag, IKE_PL_CERT, "CERT: empty");
    if (body.len == 0)
        return SYNTAX(diag, IKE_PL_CERT, "CERT encoding %u: no certificate data", enc);
    ret->encoding = enc;
    ret->data = body;
    return 0;
}

void ike_build_cert(ike_chain_writer *cw, uint8_t encoding, const void *data, size_t len)
{
    ike_payload_begin(cw, IKE_PL_CERT, false);
    buf_put_u8(cw->w, encoding);
    buf_put_bytes(cw->w, data, len);
    ike_payload_end(cw);
}

int ike_certreq_parse(buf_reader body, ike_certreq *ret, ike_diag *diag)
{
    uint8_t enc;
    if (!buf_get_u8(&body, &enc))
        return SYNTAX(diag, IKE_PL_CERTREQ, "CERTREQ: empty");
    ret->encoding = enc;
    ret->data = body;
    ret->n_hashes = 0;
    if (enc == IKE_CERT_X509_SIGNATURE) {
        if (body.len % IKE_CERTREQ_HASH_LEN != 0)
            return SYNTAX(diag, IKE_PL_CERTREQ,
                          "CERTREQ: %zu bytes is not a whole number of %d-byte hashes",
                          body.len, IKE_CERTREQ_HASH_LEN);
        ret->n_hashes = body.len / IKE_CERTREQ_HASH_LEN;
    }
    return 0;
}

void ike_build_certreq(ike_chain_writer *cw, uint8_t encoding, const void *hashes, size_t n_hashes)
{
    if (n_hashes > UINT16_MAX / IKE_CERTREQ_HASH_LEN) {
        cw->w->err = true;
        return;
    }
    ike_payload_begin(cw, IKE_PL_CERTREQ, false);
    buf_put_u8(cw->w, encoding);
    buf_put_bytes(cw->w, hashes, n_hashes * IKE_CERTREQ_HASH_LEN);
    ike_payload_end(cw);
}

/* ---------------------------------------------------------------- AUTH */

int ike_auth_parse(buf_reader body, ike_auth *ret, ike_diag *diag)
{
    uint8_t method;
    if (!buf_get_u8(&body, &method) || !buf_skip(&body, 3))
        return SYNTAX(diag, IKE_PL_AUTH, "AUTH: %zu bytes, need at least 4", body.len);
    if (body.len == 0)
        return SYNTAX(diag, IKE_PL_AUTH, "AUTH method %u: no authentication data", method);
    ret->method = method;
    ret->data = body;
    return 0;
}

void ike_build_auth(ike_chain_writer *cw, uint8_t method, const void *data, size_t len)
{
    ike_payload_begin(cw, IKE_PL_AUTH, false);
    buf_put_u8(cw->w, method);
    buf_put_zeros(cw->w, 3);
    buf_put_bytes(cw->w, data, len);
    ike_payload_end(cw);
}

/* ----------------------------------------------------------- Vendor ID */

int ike_vendor_parse(buf_reader body, buf_reader *ret, ike_diag *diag)
{
    if (body.len == 0)
        return SYNTAX(diag, IKE_PL_VENDOR, "Vendor ID: empty");
    *ret = body;
    return 0;
}

void ike_build_vendor(ike_chain_writer *cw, const void *vid, size_t len)
{
    ike_build_raw(cw, IKE_PL_VENDOR, false, vid, len);
}

/* ----------------------------------------------------------------- EAP */

int ike_eap_parse(buf_reader body, ike_eap *ret, ike_diag *diag)
{
    size_t total = body.len;
    uint8_t code, ident, type = 0;
    uint16_t len;
    if (!buf_get_u8(&body, &code) || !buf_get_u8(&body, &ident) || !buf_get_u16(&body, &len))
        return SYNTAX(diag, IKE_PL_EAP, "EAP: %zu bytes, need at least 4", total);
    if (len != total)
        return SYNTAX(diag, IKE_PL_EAP, "EAP: length %u differs from payload body %zu",
                      len, total);
    if (code == IKE_EAP_REQUEST || code == IKE_EAP_RESPONSE) {
        if (!buf_get_u8(&body, &type))
            return SYNTAX(diag, IKE_PL_EAP, "EAP %s without a type",
                          ike_eap_code_name(code));
    } else if (code == IKE_EAP_SUCCESS || code == IKE_EAP_FAILURE) {
        if (len != 4)
            return SYNTAX(diag, IKE_PL_EAP, "EAP %s: length %u, must be 4",
                          ike_eap_code_name(code), len);
    } else {
        return SYNTAX(diag, IKE_PL_EAP, "EAP: unknown code %u", code);
    }
    ret->code = code;
    ret->identifier = ident;
    ret->length = len;
    ret->type = type;
    ret->data = body;
    return 0;
}

void ike_build_eap(ike_chain_writer *cw, const void *eap_packet, size_t len)
{
    const uint8_t *p = eap_packet;
    if (len < 4 || buf_load_be16(p + 2) != len) {
        cw->w->err = true;
        return;
    }
    ike_build_raw(cw, IKE_PL_EAP, false, eap_packet, len);
}
