/* SPDX-License-Identifier: Apache-2.0 */
/*
 * PKCS#11 URIs (RFC 7512) as the profile's auth.cert.pkcs11_uri and
 * `m2mvpn keygen --uri` give them: "pkcs11:token=m2m;object=dev1;id=%01".
 * Path attributes understood: token, manufacturer, serial, model (token
 * selection), object, id, type (object selection), slot-id. Values are
 * percent-decoded. Anything else (an unknown attribute, a query such as
 * pin-value: the PIN belongs in auth.cert.pin, which is wiped) is refused
 * with a reason, so a typo cannot select another token or key silently.
 */
#ifndef M2MVPN_CRED_P11_URI_H
#define M2MVPN_CRED_P11_URI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum p11_obj_type {
    P11_TYPE_ANY = 0, P11_TYPE_PRIVATE, P11_TYPE_PUBLIC, P11_TYPE_CERT
} p11_obj_type;

typedef struct p11_uri {
    char token[33];           /* CK_TOKEN_INFO label, "" = any */
    char manufacturer[33];
    char serial[17];
    char model[17];
    char object[129];         /* CKA_LABEL, "" = any */
    uint8_t id[64];           /* CKA_ID */
    size_t id_len;
    bool has_id;
    p11_obj_type type;
    bool has_slot_id;
    unsigned long slot_id;
} p11_uri;

/** Parse. Errors: INVAL with a reason ("pkcs11_uri: unknown attribute 'tokn'"). */
int p11_uri_parse(const char *text, p11_uri *ret, char *err, size_t err_len);

/** `u` again as text with its token attributes (token, manufacturer,
 *  serial, model, slot-id) and `object`/`id` in place of its own (object
 *  NULL or "": none; id_len 0: none), percent-encoded. Errors: INVAL (does
 *  not fit in cap). */
int p11_uri_compose(const p11_uri *u, const char *object, const uint8_t *id, size_t id_len, char *out,
                    size_t cap);

#endif
