/* SPDX-License-Identifier: Apache-2.0 */
/* Name tables for every IKEv2 enum in codec.h, and the diagnostics helper. */
#include "ike/codec.h"

#include <stdarg.h>
#include <stdio.h>

typedef struct name_entry {
    unsigned value;
    const char *name;
} name_entry;

#define N(prefix, x) { prefix##x, #x }

static const char *lookup(const name_entry *t, size_t n, unsigned v)
{
    for (size_t i = 0; i < n; i++)
        if (t[i].value == v)
            return t[i].name;
    return NULL;
}

#define LOOKUP(table, v) lookup((table), sizeof(table) / sizeof((table)[0]), (v))

static const name_entry exchange_names[] = {
    N(IKE_EXCH_, IKE_SA_INIT), N(IKE_EXCH_, IKE_AUTH), N(IKE_EXCH_, CREATE_CHILD_SA),
    N(IKE_EXCH_, INFORMATIONAL), N(IKE_EXCH_, IKE_SESSION_RESUME),
    N(IKE_EXCH_, IKE_INTERMEDIATE),
};

static const name_entry payload_names[] = {
    N(IKE_PL_, NONE), N(IKE_PL_, SA), N(IKE_PL_, KE), { IKE_PL_IDI, "IDi" },
    { IKE_PL_IDR, "IDr" }, N(IKE_PL_, CERT), N(IKE_PL_, CERTREQ), N(IKE_PL_, AUTH),
    { IKE_PL_NONCE, "Nonce" }, { IKE_PL_NOTIFY, "Notify" }, { IKE_PL_DELETE, "Delete" },
    { IKE_PL_VENDOR, "Vendor ID" }, { IKE_PL_TSI, "TSi" }, { IKE_PL_TSR, "TSr" },
    N(IKE_PL_, SK), N(IKE_PL_, CP), N(IKE_PL_, EAP), N(IKE_PL_, SKF),
};

static const name_entry notify_names[] = {
    N(IKE_N_, UNSUPPORTED_CRITICAL_PAYLOAD), N(IKE_N_, INVALID_IKE_SPI),
    N(IKE_N_, INVALID_MAJOR_VERSION), N(IKE_N_, INVALID_SYNTAX),
    N(IKE_N_, INVALID_MESSAGE_ID), N(IKE_N_, INVALID_SPI), N(IKE_N_, NO_PROPOSAL_CHOSEN),
    N(IKE_N_, INVALID_KE_PAYLOAD), N(IKE_N_, AUTHENTICATION_FAILED),
    N(IKE_N_, SINGLE_PAIR_REQUIRED), N(IKE_N_, NO_ADDITIONAL_SAS),
    N(IKE_N_, INTERNAL_ADDRESS_FAILURE), N(IKE_N_, FAILED_CP_REQUIRED),
    N(IKE_N_, TS_UNACCEPTABLE), N(IKE_N_, INVALID_SELECTORS),
    N(IKE_N_, UNACCEPTABLE_ADDRESSES), N(IKE_N_, UNEXPECTED_NAT_DETECTED),
    N(IKE_N_, USE_ASSIGNED_HoA), N(IKE_N_, TEMPORARY_FAILURE), N(IKE_N_, CHILD_SA_NOT_FOUND),
    N(IKE_N_, INVALID_GROUP_ID), N(IKE_N_, AUTHORIZATION_FAILED),
    N(IKE_N_, INITIAL_CONTACT), N(IKE_N_, SET_WINDOW_SIZE), N(IKE_N_, ADDITIONAL_TS_POSSIBLE),
    N(IKE_N_, IPCOMP_SUPPORTED), N(IKE_N_, NAT_DETECTION_SOURCE_IP),
    N(IKE_N_, NAT_DETECTION_DESTINATION_IP), N(IKE_N_, COOKIE),
    N(IKE_N_, USE_TRANSPORT_MODE), N(IKE_N_, HTTP_CERT_LOOKUP_SUPPORTED), N(IKE_N_, REKEY_SA),
    N(IKE_N_, ESP_TFC_PADDING_NOT_SUPPORTED), N(IKE_N_, NON_FIRST_FRAGMENTS_ALSO),
    N(IKE_N_, MOBIKE_SUPPORTED), N(IKE_N_, ADDITIONAL_IP4_ADDRESS),
    N(IKE_N_, ADDITIONAL_IP6_ADDRESS), N(IKE_N_, NO_ADDITIONAL_ADDRESSES),
    N(IKE_N_, UPDATE_SA_ADDRESSES), N(IKE_N_, COOKIE2), N(IKE_N_, NO_NATS_ALLOWED),
    N(IKE_N_, AUTH_LIFETIME), N(IKE_N_, MULTIPLE_AUTH_SUPPORTED),
    N(IKE_N_, ANOTHER_AUTH_FOLLOWS), N(IKE_N_, REDIRECT_SUPPORTED), N(IKE_N_, REDIRECT),
    N(IKE_N_, REDIRECTED_FROM), N(IKE_N_, EAP_ONLY_AUTHENTICATION),
    N(IKE_N_, CHILDLESS_IKEV2_SUPPORTED), N(IKE_N_, IKEV2_FRAGMENTATION_SUPPORTED),
    N(IKE_N_, SIGNATURE_HASH_ALGORITHMS), N(IKE_N_, CLONE_IKE_SA_SUPPORTED),
    N(IKE_N_, CLONE_IKE_SA), N(IKE_N_, PUZZLE), N(IKE_N_, USE_PPK), N(IKE_N_, PPK_IDENTITY),
    N(IKE_N_, NO_PPK_AUTH), N(IKE_N_, INTERMEDIATE_EXCHANGE_SUPPORTED),
};

static const name_entry protocol_names[] = {
    N(IKE_PROTO_, NONE), N(IKE_PROTO_, IKE), N(IKE_PROTO_, AH), N(IKE_PROTO_, ESP),
};

static const name_entry transform_type_names[] = {
    N(IKE_TT_, ENCR), N(IKE_TT_, PRF), N(IKE_TT_, INTEG), N(IKE_TT_, KE), N(IKE_TT_, ESN),
};

static const name_entry auth_method_names[] = {
    N(IKE_AUTH_, RSA_SIG), N(IKE_AUTH_, SHARED_KEY_MIC), N(IKE_AUTH_, DSS_SIG),
    N(IKE_AUTH_, ECDSA_SHA256_P256), N(IKE_AUTH_, ECDSA_SHA384_P384),
    N(IKE_AUTH_, ECDSA_SHA512_P521), N(IKE_AUTH_, GSPAM), N(IKE_AUTH_, NULL),
    N(IKE_AUTH_, DIGITAL_SIGNATURE),
};

static const name_entry id_type_names[] = {
    N(IKE_ID_, IPV4_ADDR), N(IKE_ID_, FQDN), N(IKE_ID_, RFC822_ADDR), N(IKE_ID_, IPV6_ADDR),
    N(IKE_ID_, DER_ASN1_DN), N(IKE_ID_, DER_ASN1_GN), N(IKE_ID_, KEY_ID),
};

static const name_entry cert_encoding_names[] = {
    N(IKE_CERT_, PKCS7_X509), N(IKE_CERT_, PGP), N(IKE_CERT_, DNS_KEY),
    N(IKE_CERT_, X509_SIGNATURE), N(IKE_CERT_, KERBEROS), N(IKE_CERT_, CRL), N(IKE_CERT_, ARL),
    N(IKE_CERT_, SPKI), N(IKE_CERT_, X509_ATTRIBUTE), N(IKE_CERT_, RAW_RSA_KEY),
    N(IKE_CERT_, HASH_URL_X509), N(IKE_CERT_, HASH_URL_BUNDLE), N(IKE_CERT_, RAW_PUBLIC_KEY),
};

static const name_entry ts_type_names[] = {
    N(IKE_TS_, IPV4_ADDR_RANGE), N(IKE_TS_, IPV6_ADDR_RANGE),
};

static const name_entry cfg_type_names[] = {
    N(IKE_CFG_, REQUEST), N(IKE_CFG_, REPLY), N(IKE_CFG_, SET), N(IKE_CFG_, ACK),
};

static const name_entry cp_attr_names[] = {
    N(IKE_CP_, INTERNAL_IP4_ADDRESS), N(IKE_CP_, INTERNAL_IP4_NETMASK),
    N(IKE_CP_, INTERNAL_IP4_DNS), N(IKE_CP_, INTERNAL_IP4_NBNS), N(IKE_CP_, INTERNAL_IP4_DHCP),
    N(IKE_CP_, APPLICATION_VERSION), N(IKE_CP_, INTERNAL_IP6_ADDRESS),
    N(IKE_CP_, INTERNAL_IP6_DNS), N(IKE_CP_, INTERNAL_IP6_DHCP),
    N(IKE_CP_, INTERNAL_IP4_SUBNET), N(IKE_CP_, SUPPORTED_ATTRIBUTES),
    N(IKE_CP_, INTERNAL_IP6_SUBNET), N(IKE_CP_, INTERNAL_DNS_DOMAIN),
};

static const name_entry eap_code_names[] = {
    N(IKE_EAP_, REQUEST), N(IKE_EAP_, RESPONSE), N(IKE_EAP_, SUCCESS), N(IKE_EAP_, FAILURE),
};

const char *ike_exchange_name(unsigned v) { return LOOKUP(exchange_names, v); }
const char *ike_payload_name(unsigned v) { return LOOKUP(payload_names, v); }
const char *ike_notify_name(unsigned v) { return LOOKUP(notify_names, v); }
const char *ike_protocol_name(unsigned v) { return LOOKUP(protocol_names, v); }
const char *ike_transform_type_name(unsigned v) { return LOOKUP(transform_type_names, v); }
const char *ike_auth_method_name(unsigned v) { return LOOKUP(auth_method_names, v); }
const char *ike_id_type_name(unsigned v) { return LOOKUP(id_type_names, v); }
const char *ike_cert_encoding_name(unsigned v) { return LOOKUP(cert_encoding_names, v); }
const char *ike_ts_type_name(unsigned v) { return LOOKUP(ts_type_names, v); }
const char *ike_cfg_type_name(unsigned v) { return LOOKUP(cfg_type_names, v); }
const char *ike_cp_attr_name(unsigned v) { return LOOKUP(cp_attr_names, v); }
const char *ike_eap_code_name(unsigned v) { return LOOKUP(eap_code_names, v); }

bool ike_payload_type_known(unsigned v)
{
    return (v >= IKE_PL_SA && v <= IKE_PL_EAP) || v == IKE_PL_SKF;
}

void ike_diag_clear(ike_diag *d)
{
    if (!d)
        return;
    d->notify = 0;
    d->payload_type = 0;
    d->text[0] = '\0';
}

int ike_diag_set(ike_diag *d, int err, uint16_t notify, uint8_t payload_type,
                 const char *fmt, ...)
{
    if (!d)
        return err;
    d->notify = notify;
    d->payload_type = payload_type;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->text, sizeof(d->text), fmt, ap);
    va_end(ap);
    return err;
}
