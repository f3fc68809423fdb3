/* SPDX-License-Identifier: Apache-2.0 */
/*
 * IKEv2 wire codec (RFC 7296 §3, RFC 5282 AEAD in SK, RFC 7383 fragmentation,
 * RFC 3948 §2.2 non-ESP marker). Pure bytes in, typed views out, and back.
 *
 * What the codec does and does not do:
 *  - It never allocates for parsing: every parsed value is a buf_reader view
 *    into the caller's bytes (or into the caller's decryption buffer), valid as
 *    long as those bytes are. Only the fragment reassembly buffer allocates.
 *  - It knows no cryptography. Encryption/integrity of the SK and SKF payloads
 *    run through the ike_sk_cipher callback interface, so the engine plugs in
 *    lib/crypto and tests/fuzzers plug in a toy cipher.
 *  - Parsing is two-staged like OpenBSD iked: ike_message_parse() validates the
 *    header and every generic payload header (length >= 4 and within what is
 *    left, at most IKE_MAX_PAYLOADS, SK/SKF last) BEFORE any typed parser runs.
 *    Typed parsers then get the payload body only.
 *
 * Errors: functions return 0 (or a documented positive value) or a negative
 * M2MVPN_E_* code: E_PROTOCOL for malformed input, E_INVAL for bad arguments
 * (and builds that do not fit), E_NOTSUPP for things this codec does not do,
 * E_CRYPTO when the cipher callback fails (ICV mismatch), E_NOMEM.
 * Where a function takes an `ike_diag *` (NULL allowed) it fills in a reason
 * text ("payload 37 (CERT): length 9000 exceeds remaining 120") and, where the
 * RFC defines one, the error notify to answer with. On failure output
 * parameters are unspecified unless documented otherwise; readers passed by
 * pointer are not advanced.
 *
 * Builders write into a buf_writer (lib/core/buf.h) with its sticky error: a
 * run of builds is checked once with ike_chain_writer_ok(). Builders that get
 * arguments the wire format cannot carry (a nonce of 300 bytes, a payload over
 * 65535 bytes) also set the sticky error.
 */
#ifndef M2MVPN_IKE_CODEC_H
#define M2MVPN_IKE_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "profile/proposal.h"

/* ------------------------------------------------------------ constants */

#define IKE_HEADER_LEN 28
#define IKE_HDR_NEXT_PAYLOAD_AT 16  /* offset of Next Payload in the header */
#define IKE_HDR_LENGTH_AT 24        /* offset of Length in the header */
#define IKE_GENERIC_HEADER_LEN 4
#define IKE_SKF_HEADER_LEN 8        /* generic header + Fragment Number + Total Fragments */
#define IKE_MAX_PAYLOADS 64         /* per chain; more is rejected */
#define IKE_NON_ESP_MARKER_LEN 4
#define IKE_VERSION_MAJOR 2
#define IKE_VERSION_MINOR 0

/* Header flags (RFC 7296 §3.1) */
#define IKE_FLAG_INITIATOR 0x08
#define IKE_FLAG_VERSION   0x10
#define IKE_FLAG_RESPONSE  0x20

/* Exchange types (RFC 7296 §3.1) */
typedef enum ike_exchange_type {
    IKE_EXCH_IKE_SA_INIT = 34,
    IKE_EXCH_IKE_AUTH = 35,
    IKE_EXCH_CREATE_CHILD_SA = 36,
    IKE_EXCH_INFORMATIONAL = 37,
    IKE_EXCH_IKE_SESSION_RESUME = 38,   /* RFC 5723 */
    IKE_EXCH_IKE_INTERMEDIATE = 43,     /* RFC 9242 */
} ike_exchange_type;

/* Payload types (RFC 7296 §3.2, RFC 7383 §2.5) */
typedef enum ike_payload_type {
    IKE_PL_NONE = 0,
    IKE_PL_SA = 33,
    IKE_PL_KE = 34,
    IKE_PL_IDI = 35,
    IKE_PL_IDR = 36,
    IKE_PL_CERT = 37,
    IKE_PL_CERTREQ = 38,
    IKE_PL_AUTH = 39,
    IKE_PL_NONCE = 40,
    IKE_PL_NOTIFY = 41,
    IKE_PL_DELETE = 42,
    IKE_PL_VENDOR = 43,
    IKE_PL_TSI = 44,
    IKE_PL_TSR = 45,
    IKE_PL_SK = 46,
    IKE_PL_CP = 47,
    IKE_PL_EAP = 48,
    IKE_PL_SKF = 53,
} ike_payload_type;

/* Notify message types (RFC 7296 §3.10.1 and the IANA registry) */
typedef enum ike_notify_type {
    /* errors */
    IKE_N_UNSUPPORTED_CRITICAL_PAYLOAD = 1,
    IKE_N_INVALID_IKE_SPI = 4,
    IKE_N_INVALID_MAJOR_VERSION = 5,
    IKE_N_INVALID_SYNTAX = 7,
    IKE_N_INVALID_MESSAGE_ID = 9,
    IKE_N_INVALID_SPI = 11,
    IKE_N_NO_PROPOSAL_CHOSEN = 14,
    IKE_N_INVALID_KE_PAYLOAD = 17,
    IKE_N_AUTHENTICATION_FAILED = 24,
    IKE_N_SINGLE_PAIR_REQUIRED = 34,
    IKE_N_NO_ADDITIONAL_SAS = 35,
    IKE_N_INTERNAL_ADDRESS_FAILURE = 36,
    IKE_N_FAILED_CP_REQUIRED = 37,
    IKE_N_TS_UNACCEPTABLE = 38,
    IKE_N_INVALID_SELECTORS = 39,
    IKE_N_UNACCEPTABLE_ADDRESSES = 40,   /* RFC 4555 */
    IKE_N_UNEXPECTED_NAT_DETECTED = 41,  /* RFC 4555 */
    IKE_N_USE_ASSIGNED_HoA = 42,         /* RFC 5026 */
    IKE_N_TEMPORARY_FAILURE = 43,
    IKE_N_CHILD_SA_NOT_FOUND = 44,
    IKE_N_INVALID_GROUP_ID = 45,         /* RFC 9838 (G-IKEv2) */
    IKE_N_AUTHORIZATION_FAILED = 46,
    /* status */
    IKE_N_INITIAL_CONTACT = 16384,
    IKE_N_SET_WINDOW_SIZE = 16385,
    IKE_N_ADDITIONAL_TS_POSSIBLE = 16386,
    IKE_N_IPCOMP_SUPPORTED = 16387,
    IKE_N_NAT_DETECTION_SOURCE_IP = 16388,
    IKE_N_NAT_DETECTION_DESTINATION_IP = 16389,
    IKE_N_COOKIE = 16390,
    IKE_N_USE_TRANSPORT_MODE = 16391,
    IKE_N_HTTP_CERT_LOOKUP_SUPPORTED = 16392,
    IKE_N_REKEY_SA = 16393,
    IKE_N_ESP_TFC_PADDING_NOT_SUPPORTED = 16394,
    IKE_N_NON_FIRST_FRAGMENTS_ALSO = 16395,
    IKE_N_MOBIKE_SUPPORTED = 16396,      /* RFC 4555 */
    IKE_N_ADDITIONAL_IP4_ADDRESS = 16397,
    IKE_N_ADDITIONAL_IP6_ADDRESS = 16398,
    IKE_N_NO_ADDITIONAL_ADDRESSES = 16399,
    IKE_N_UPDATE_SA_ADDRESSES = 16400,
    IKE_N_COOKIE2 = 16401,
    IKE_N_NO_NATS_ALLOWED = 16402,
    IKE_N_AUTH_LIFETIME = 16403,         /* RFC 4478 */
    IKE_N_MULTIPLE_AUTH_SUPPORTED = 16404, /* RFC 4739 */
    IKE_N_ANOTHER_AUTH_FOLLOWS = 16405,
    IKE_N_REDIRECT_SUPPORTED = 16406,    /* RFC 5685 */
    IKE_N_REDIRECT = 16407,
    IKE_N_REDIRECTED_FROM = 16408,
    IKE_N_EAP_ONLY_AUTHENTICATION = 16417, /* RFC 5998 */
    IKE_N_CHILDLESS_IKEV2_SUPPORTED = 16418, /* RFC 6023 */
    IKE_N_IKEV2_FRAGMENTATION_SUPPORTED = 16430, /* RFC 7383 */
    IKE_N_SIGNATURE_HASH_ALGORITHMS = 16431,     /* RFC 7427 */
    IKE_N_CLONE_IKE_SA_SUPPORTED = 16432,
    IKE_N_CLONE_IKE_SA = 16433,
    IKE_N_PUZZLE = 16434,
    IKE_N_USE_PPK = 16435,
    IKE_N_PPK_IDENTITY = 16436,
    IKE_N_NO_PPK_AUTH = 16437,
    IKE_N_INTERMEDIATE_EXCHANGE_SUPPORTED = 16438, /* RFC 9242 */
} ike_notify_type;

/* Protocol IDs (RFC 7296 §3.3.1) */
typedef enum ike_protocol_id {
    IKE_PROTO_NONE = 0,
    IKE_PROTO_IKE = 1,
    IKE_PROTO_AH = 2,
    IKE_PROTO_ESP = 3,
} ike_protocol_id;

/* Transform types (RFC 7296 §3.3.2) */
typedef enum ike_transform_type {
    IKE_TT_ENCR = 1,
    IKE_TT_PRF = 2,
    IKE_TT_INTEG = 3,
    IKE_TT_KE = 4,
    IKE_TT_ESN = 5,
} ike_transform_type;
#define IKE_TT_MAX 5

/* Transform attribute types (RFC 7296 §3.3.5) */
#define IKE_ATTR_KEY_LENGTH 14

/* Authentication methods (RFC 7296 §3.8, RFC 7427) */
typedef enum ike_auth_method {
    IKE_AUTH_RSA_SIG = 1,
    IKE_AUTH_SHARED_KEY_MIC = 2,
    IKE_AUTH_DSS_SIG = 3,
    IKE_AUTH_ECDSA_SHA256_P256 = 9,
    IKE_AUTH_ECDSA_SHA384_P384 = 10,
    IKE_AUTH_ECDSA_SHA512_P521 = 11,
    IKE_AUTH_GSPAM = 12,
    IKE_AUTH_NULL = 13,
    IKE_AUTH_DIGITAL_SIGNATURE = 14,
} ike_auth_method;

/* Identification types (RFC 7296 §3.5) */
typedef enum ike_id_type {
    IKE_ID_IPV4_ADDR = 1,
    IKE_ID_FQDN = 2,
    IKE_ID_RFC822_ADDR = 3,
    IKE_ID_IPV6_ADDR = 5,
    IKE_ID_DER_ASN1_DN = 9,
    IKE_ID_DER_ASN1_GN = 10,
    IKE_ID_KEY_ID = 11,
} ike_id_type;

/* Certificate encodings (RFC 7296 §3.6) */
typedef enum ike_cert_encoding {
    IKE_CERT_PKCS7_X509 = 1,
    IKE_CERT_PGP = 2,
    IKE_CERT_DNS_KEY = 3,
    IKE_CERT_X509_SIGNATURE = 4,
    IKE_CERT_KERBEROS = 6,
    IKE_CERT_CRL = 7,
    IKE_CERT_ARL = 8,
    IKE_CERT_SPKI = 9,
    IKE_CERT_X509_ATTRIBUTE = 10,
    IKE_CERT_RAW_RSA_KEY = 11,
    IKE_CERT_HASH_URL_X509 = 12,
    IKE_CERT_HASH_URL_BUNDLE = 13,
    IKE_CERT_RAW_PUBLIC_KEY = 15,        /* RFC 7670 */
} ike_cert_encoding;

/* Traffic selector types (RFC 7296 §3.13.1) */
typedef enum ike_ts_type {
    IKE_TS_IPV4_ADDR_RANGE = 7,
    IKE_TS_IPV6_ADDR_RANGE = 8,
} ike_ts_type;

/* Configuration payload types and attributes (RFC 7296 §3.15) */
typedef enum ike_cfg_type {
    IKE_CFG_REQUEST = 1,
    IKE_CFG_REPLY = 2,
    IKE_CFG_SET = 3,
    IKE_CFG_ACK = 4,
} ike_cfg_type;

typedef enum ike_cp_attr_type {
    IKE_CP_INTERNAL_IP4_ADDRESS = 1,
    IKE_CP_INTERNAL_IP4_NETMASK = 2,
    IKE_CP_INTERNAL_IP4_DNS = 3,
    IKE_CP_INTERNAL_IP4_NBNS = 4,
    IKE_CP_INTERNAL_IP4_DHCP = 6,
    IKE_CP_APPLICATION_VERSION = 7,
    IKE_CP_INTERNAL_IP6_ADDRESS = 8,
    IKE_CP_INTERNAL_IP6_DNS = 10,
    IKE_CP_INTERNAL_IP6_DHCP = 12,
    IKE_CP_INTERNAL_IP4_SUBNET = 13,
    IKE_CP_SUPPORTED_ATTRIBUTES = 14,
    IKE_CP_INTERNAL_IP6_SUBNET = 15,
    IKE_CP_INTERNAL_DNS_DOMAIN = 25,     /* RFC 8598 */
} ike_cp_attr_type;

/* EAP codes (RFC 3748 §4) */
typedef enum ike_eap_code {
    IKE_EAP_REQUEST = 1,
    IKE_EAP_RESPONSE = 2,
    IKE_EAP_SUCCESS = 3,
    IKE_EAP_FAILURE = 4,
} ike_eap_code;

/* ---------------------------------------------------------- name tables */

/* Each returns a static name, or NULL for a value it does not know (so a log
 * line can print the number instead). */
const char *ike_exchange_name(unsigned v);
const char *ike_payload_name(unsigned v);
const char *ike_notify_name(unsigned v);
const char *ike_protocol_name(unsigned v);
const char *ike_transform_type_name(unsigned v);
const char *ike_auth_method_name(unsigned v);
const char *ike_id_type_name(unsigned v);
const char *ike_cert_encoding_name(unsigned v);
const char *ike_ts_type_name(unsigned v);
const char *ike_cfg_type_name(unsigned v);
const char *ike_cp_attr_name(unsigned v);
const char *ike_eap_code_name(unsigned v);
/* A payload type this codec can parse (33..48, 53). */
bool ike_payload_type_known(unsigned v);

/* ------------------------------------------------------------ diagnostics */

typedef struct ike_diag {
    uint16_t notify;        /* error notify to answer with (IKE_N_*), or 0 */
    uint8_t payload_type;   /* offending payload type, or 0; for
                             * UNSUPPORTED_CRITICAL_PAYLOAD it is the notify data */
    char text[192];         /* reason, NUL-terminated; "" if none */
} ike_diag;

/* Clear a diag (NULL is fine). */
void ike_diag_clear(ike_diag *d);
/* Set notify/payload and format the text (NULL d is fine). Returns `err`, so
 * a parser can `return ike_diag_set(d, M2MVPN_E_PROTOCOL, IKE_N_INVALID_SYNTAX, 0, "...")`. */
int ike_diag_set(ike_diag *d, int err, uint16_t notify, uint8_t payload_type,
                 const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* ---------------------------------------------------------------- header */

typedef struct ike_header {
    uint64_t spi_i;         /* as a big-endian number: byte 0 is the top byte */
    uint64_t spi_r;
    uint8_t next_payload;
    uint8_t major, minor;
    uint8_t exchange;
    uint8_t flags;          /* IKE_FLAG_* */
    uint32_t message_id;
    uint32_t length;        /* total message length */
} ike_header;

/*
 * Parse the 28-byte header at the start of `msg` (one UDP datagram after any
 * non-ESP marker). Rules (RFC 7296 §3.1, §2.5):
 *  - major version must be 2 (higher -> notify INVALID_MAJOR_VERSION; lower
 *    is IKEv1 -> INVALID_SYNTAX); any minor version is accepted;
 *  - the Length field must EQUAL the datagram length. RFC 7296 defines it as
 *    the length of the total message and one UDP datagram carries one message;
 *    accepting a shorter declared length would let trailing bytes ride along
 *    outside the integrity check, so they are rejected (INVALID_SYNTAX).
 * The reader is not advanced. Errors: E_PROTOCOL.
 */
int ike_header_parse(const buf_reader *msg, ike_header *ret, ike_diag *diag);

/* Write the 28-byte header; its Length field is taken from hdr->length (use
 * ike_message_finish() to patch it once the message is complete). The
 * version is always written as 2.0 (hdr->major/minor are ignored). */
void ike_header_build(buf_writer *w, const ike_header *hdr);
/* Patch the Length field of the header written at offset `hdr_at` to the
 * writer's current length minus hdr_at. Sets the sticky error on overflow. */
void ike_message_finish(buf_writer *w, size_t hdr_at);

/* ------------------------------------------------- UDP port 4500 framing */

typedef enum ike_udp_kind {
    IKE_UDP_IKE,        /* non-ESP marker stripped: an IKE message follows */
    IKE_UDP_ESP,        /* an ESP packet (first 4 bytes: non-zero SPI) */
    IKE_UDP_KEEPALIVE,  /* RFC 3948 §2.3 NAT-keepalive (one 0xFF byte) */
    IKE_UDP_INVALID,    /* too short to be anything */
} ike_udp_kind;

/* Classify a datagram received on port 4500 (RFC 3948 §2.2). For IKE_UDP_IKE
 * the reader is advanced past the marker; otherwise it is left alone. */
ike_udp_kind ike_udp_classify(buf_reader *dgram);
/* Write the 4 zero bytes that precede IKE messages on port 4500. */
void ike_put_non_esp_marker(buf_writer *w);

/* --------------------------------------------------------- payload chain */

typedef struct ike_payload {
    uint8_t type;           /* IKE_PL_* */
    uint8_t next_type;      /* the Next Payload field (SK/SKF: first inner type) */
    bool critical;
    size_t offset;          /* offset of the generic header within the region parsed */
    buf_reader body;        /* payload without its 4-byte generic header */
} ike_payload;

typedef struct ike_chain {
    ike_payload pl[IKE_MAX_PAYLOADS];
    size_t n;
    size_t n_skipped;       /* unknown non-critical payloads skipped */
} ike_chain;

/*
 * Walk a chain of generic payload headers over all of `region` starting with
 * type `first`. Validates, before anything looks inside: each header fits,
 * length >= 4 and <= bytes left, the chain ends (Next Payload 0) exactly at
 * the end of the region, at most IKE_MAX_PAYLOADS payloads, SK/SKF only as
 * the last payload. Unknown types without the critical bit are skipped
 * (counted in n_skipped); with it -> notify UNSUPPORTED_CRITICAL_PAYLOAD and
 * diag->payload_type = the type (RFC 7296 §2.5). `base_offset` is added to
 * each payload's offset (pass IKE_HEADER_LEN for a message body).
 * Errors: E_PROTOCOL.
 */
int ike_chain_parse(buf_reader region, uint8_t first, size_t base_offset,
                    ike_chain *ret, ike_diag *diag);

/* First payload of `type` after `after` (NULL: from the start), or NULL. */
const ike_payload *ike_chain_find(const ike_chain *c, uint8_t type, const ike_payload *after);
size_t ike_chain_count(const ike_chain *c, uint8_t type);

typedef struct ike_message {
    buf_reader raw;         /* the whole message, header included */
    ike_header hdr;
    ike_chain chain;        /* offsets relative to raw.p */
} ike_message;

/* Header + chain. The SK/SKF payload, if present, is the last element of
 * chain (see ike_sk_open() / ike_frag_add()). Errors: E_PROTOCOL. */
int ike_message_parse(buf_reader msg, ike_message *ret, ike_diag *diag);

/* --------------------------------------------------------- chain writer */

/*
 * Writes a chain of payloads, patching each payload's Next Payload field (and
 * the one in front of the chain: IKE header byte 16, or the SK generic header)
 * when the following payload begins, and each payload's Length when it ends.
 */
typedef struct ike_chain_writer {
    buf_writer *w;
    size_t hdr_at;          /* IKE header offset (ike_message_begin), else SIZE_MAX */
    size_t next_field_at;   /* where the type of the next payload goes; SIZE_MAX: nowhere */
    size_t open_at;         /* generic header of the open payload; SIZE_MAX: none */
    uint8_t first_type;     /* type of the first payload written, 0 if none */
    size_t count;
} ike_chain_writer;

/* `next_field_at`: offset in w of the Next Payload byte that must name the
 * first payload (hdr_at + IKE_HDR_NEXT_PAYLOAD_AT after ike_header_build()),
 * or SIZE_MAX for a free-standing chain (read first_type afterwards). */
void ike_chain_writer_init(ike_chain_writer *cw, buf_writer *w, size_t next_field_at);
/* Start a payload: closes the open one, writes a generic header. */
void ike_payload_begin(ike_chain_writer *cw, uint8_t type, bool critical);
/* Close the open payload (patch its length). Idempotent. */
void ike_payload_end(ike_chain_writer *cw);
/* Close the open payload; the last one keeps Next Payload 0. */
void ike_chain_writer_finish(ike_chain_writer *cw);
static inline bool ike_chain_writer_ok(const ike_chain_writer *cw) { return buf_writer_ok(cw->w); }
/* A complete raw payload (type + body). */
void ike_build_raw(ike_chain_writer *cw, uint8_t type, bool critical, const void *body, size_t len);

/* Convenience for an unprotected message (IKE_SA_INIT): write `hdr` at the
 * writer's current position and set up cw to chain payloads after it. */
void ike_message_begin(buf_writer *w, const ike_header *hdr, ike_chain_writer *cw);
/* Close the last payload and patch the header length. Errors: E_INVAL (the
 * writer overflowed or a build was refused). */
int ike_message_end(ike_chain_writer *cw);

/* ------------------------------------------------------------- SA (§3.3) */

#define IKE_MAX_PROPOSALS 16
#define IKE_MAX_TRANSFORMS 256      /* per SA payload, all proposals together (a gateway
                                     * rekeying offers its whole list: strongSwan sends ~110) */

typedef struct ike_transform {
    uint8_t type;           /* IKE_TT_* */
    uint16_t id;
    uint16_t key_bits;      /* Key Length attribute, 0 if absent */
    bool unknown_attr;      /* carried an attribute other than one nonzero Key Length
                             * on an ENCR transform */
} ike_transform;

typedef struct ike_proposal_view {
    uint8_t number;
    uint8_t protocol;       /* IKE_PROTO_* */
    uint8_t spi_len;
    uint8_t spi[8];
    size_t first_transform; /* index into ike_sa_view.tr */
    size_t n_transforms;
} ike_proposal_view;

typedef struct ike_sa_view {
    ike_proposal_view prop[IKE_MAX_PROPOSALS];
    size_t n_prop;
    ike_transform tr[IKE_MAX_TRANSFORMS];
    size_t n_tr;
} ike_sa_view;

/* Every proposal and transform (bounded). SPI size must be 0, 4 or 8.
 * Errors: E_PROTOCOL (INVALID_SYNTAX). */
int ike_sa_parse(buf_reader body, ike_sa_view *ret, ike_diag *diag);

/* The responder's choice: exactly one proposal, at most one transform of each
 * type, no unknown transform types or attributes. */
typedef struct ike_sa_choice {
    uint8_t number;
    uint8_t protocol;
    uint8_t spi_len;
    uint8_t spi[8];
    uint8_t present;        /* bit (1u << IKE_TT_x) set if that type is there */
    uint16_t id[IKE_TT_MAX + 1];    /* indexed by IKE_TT_* */
    uint16_t encr_key_bits;
} ike_sa_choice;

static inline bool ike_sa_choice_has(const ike_sa_choice *c, unsigned tt)
{
    return tt <= IKE_TT_MAX && (c->present & (1u << tt));
}

/* Errors: E_PROTOCOL (INVALID_SYNTAX) for anything but one clean proposal. */
int ike_sa_parse_choice(buf_reader body, ike_sa_choice *ret, ike_diag *diag);

/* One SA payload offering props[0..n) numbered 1..n, each with `protocol`
 * (IKE_PROTO_IKE / IKE_PROTO_ESP) and the same SPI (spi_len 0 for the first
 * IKE_SA_INIT, 8 for an IKE rekey, 4 for ESP). ENCR carries the Key Length
 * attribute where the algorithm has a variable key (AES), not for
 * ChaCha20-Poly1305 (RFC 7634 §2). PRF only for IKE; INTEG omitted when
 * empty; ESP always gets an ESN transform (ESN_NO if the proposal has none). */
void ike_build_sa(ike_chain_writer *cw, const proposal *props, size_t n,
                  uint8_t protocol, const uint8_t *spi, size_t spi_len);
/* The chosen proposal as the single-proposal SA payload a responder sends. */
void ike_build_sa_choice(ike_chain_writer *cw, const ike_sa_choice *c);
/* True for ENCR IDs that need the Key Length attribute. */
bool ike_encr_has_key_length(uint16_t encr_id);

/* ------------------------------------------------ simple typed payloads */

typedef struct ike_ke { uint16_t group; buf_reader data; } ike_ke;
/* Errors: E_PROTOCOL (data empty). */
int ike_ke_parse(buf_reader body, ike_ke *ret, ike_diag *diag);
void ike_build_ke(ike_chain_writer *cw, uint16_t group, const void *data, size_t len);

#define IKE_NONCE_MIN 16
#define IKE_NONCE_MAX 256
/* Nonce data must be 16..256 bytes (RFC 7296 §3.9). */
int ike_nonce_parse(buf_reader body, buf_reader *ret, ike_diag *diag);
void ike_build_nonce(ike_chain_writer *cw, const void *nonce, size_t len);

typedef struct ike_notify {
    uint8_t protocol;
    uint16_t type;          /* IKE_N_* */
    buf_reader spi;         /* 0, 4 or 8 bytes */
    buf_reader data;
} ike_notify;
int ike_notify_parse(buf_reader body, ike_notify *ret, ike_diag *diag);
void ike_build_notify(ike_chain_writer *cw, uint8_t protocol, uint16_t type,
                      const void *spi, size_t spi_len, const void *data, size_t data_len);
/* Scan the chain for a Notify of `type`; 0 and *ret filled if found, 1 if
 * none, negative if a Notify payload is malformed. */
int ike_chain_find_notify(const ike_chain *c, uint16_t type, ike_notify *ret, ike_diag *diag);

typedef struct ike_delete {
    uint8_t protocol;
    uint8_t spi_len;        /* 0 for IKE, 4 for ESP/AH */
    uint16_t n_spi;
    buf_reader spis;        /* n_spi * spi_len bytes */
} ike_delete;
/* Errors: E_PROTOCOL (spi count/size inconsistent with the length, IKE with SPIs). */
int ike_delete_parse(buf_reader body, ike_delete *ret, ike_diag *diag);
void ike_build_delete(ike_chain_writer *cw, uint8_t protocol, uint8_t spi_len,
                      const void *spis, uint16_t n_spi);

typedef struct ike_id { uint8_t type; buf_reader data; } ike_id;
/* IDi/IDr (§3.5). Errors: E_PROTOCOL (no data, IPv4/IPv6 of the wrong size). */
int ike_id_parse(buf_reader body, ike_id *ret, ike_diag *diag);
void ike_build_id(ike_chain_writer *cw, uint8_t pl_type /* IKE_PL_IDI/IDR */,
                  uint8_t id_type, const void *data, size_t len);

typedef struct ike_cert { uint8_t encoding; buf_reader data; } ike_cert;
int ike_cert_parse(buf_reader body, ike_cert *ret, ike_diag *diag);
void ike_build_cert(ike_chain_writer *cw, uint8_t encoding, const void *data, size_t len);

#define IKE_CERTREQ_HASH_LEN 20     /* SHA-1 of the CA's SubjectPublicKeyInfo */
typedef struct ike_certreq { uint8_t encoding; buf_reader data; size_t n_hashes; } ike_certreq;
/* For X509_SIGNATURE the data must be a whole number of 20-byte hashes
 * (it may be empty: "any CA"). Errors: E_PROTOCOL. */
int ike_certreq_parse(buf_reader body, ike_certreq *ret, ike_diag *diag);
void ike_build_certreq(ike_chain_writer *cw, uint8_t encoding, const void *hashes, size_t n_hashes);

typedef struct ike_auth { uint8_t method; buf_reader data; } ike_auth;
int ike_auth_parse(buf_reader body, ike_auth *ret, ike_diag *diag);
void ike_build_auth(ike_chain_writer *cw, uint8_t method, const void *data, size_t len);

/* Vendor ID: body is the ID itself (non-empty). */
int ike_vendor_parse(buf_reader body, buf_reader *ret, ike_diag *diag);
void ike_build_vendor(ike_chain_writer *cw, const void *vid, size_t len);

typedef struct ike_eap {
    uint8_t code;           /* IKE_EAP_* */
    uint8_t identifier;
    uint16_t length;        /* EAP length = whole payload body */
    uint8_t type;           /* request/response only, else 0 */
    buf_reader data;        /* after the type (request/response), else empty */
} ike_eap;
/* EAP length must equal the body length; Success/Failure are exactly 4 bytes;
 * Request/Response at least 5. Errors: E_PROTOCOL. */
int ike_eap_parse(buf_reader body, ike_eap *ret, ike_diag *diag);
/* `body` is a complete EAP packet (code..data); its length field must match. */
void ike_build_eap(ike_chain_writer *cw, const void *eap_packet, size_t len);

/* ------------------------------------------------ TS (§3.13) and CP (§3.15) */

#define IKE_MAX_TS 16

typedef struct ike_ts {
    uint8_t type;           /* IKE_TS_IPV4_ADDR_RANGE / IPV6 */
    uint8_t ip_proto;       /* 0 = any */
    uint16_t port_start, port_end;
    uint8_t addr_start[16]; /* 4 or 16 bytes used, network order */
    uint8_t addr_end[16];
} ike_ts;

typedef struct ike_ts_list {
    ike_ts ts[IKE_MAX_TS];
    size_t n;
    size_t n_skipped;       /* selectors of unknown type skipped */
} ike_ts_list;

/* Number of TS (>= 1) must match what is there; selector length 16 (IPv4) or
 * 40 (IPv6); unknown TS types are skipped using their length. A start address
 * above the end address is rejected; ports are kept as sent (start 65535,
 * end 0 means OPAQUE, RFC 7296 §3.13.1). Errors: E_PROTOCOL. */
int ike_ts_parse(buf_reader body, ike_ts_list *ret, ike_diag *diag);
void ike_build_ts(ike_chain_writer *cw, uint8_t pl_type /* IKE_PL_TSI/TSR */,
                  const ike_ts *ts, size_t n);
/* A selector for the prefix addr/prefix_len (`family_len` 4 or 16 bytes),
 * protocol and ports. Errors: E_INVAL (prefix_len too long, bad family). */
int ike_ts_from_prefix(const uint8_t *addr, size_t family_len, unsigned prefix_len,
                       uint8_t ip_proto, uint16_t port_start, uint16_t port_end, ike_ts *ret);
/* The prefix that a selector's address range is exactly, into addr (4 or 16
 * bytes per ts->type) and *prefix_len. Errors: E_INVAL (range is no prefix). */
int ike_ts_to_prefix(const ike_ts *ts, uint8_t addr[16], unsigned *prefix_len);
static inline size_t ike_ts_addr_len(const ike_ts *ts)
{
    return ts->type == IKE_TS_IPV6_ADDR_RANGE ? 16 : 4;
}

#define IKE_MAX_CP_ATTRS 32

typedef struct ike_cp_attr {
    uint16_t type;          /* IKE_CP_* (15 bits) */
    buf_reader value;       /* may be empty (requests) */
} ike_cp_attr;

typedef struct ike_cp {
    uint8_t cfg_type;       /* IKE_CFG_* */
    ike_cp_attr attr[IKE_MAX_CP_ATTRS];
    size_t n;
} ike_cp;

/* Values of known attributes must be empty or of their RFC size (IPv4 4,
 * netmask 4, IPv6 address 17, IPv6 DNS 16, ...). Errors: E_PROTOCOL. */
int ike_cp_parse(buf_reader body, ike_cp *ret, ike_diag *diag);
/* attrs[i].value may be empty (request for "any"). */
void ike_build_cp(ike_chain_writer *cw, uint8_t cfg_type, const ike_cp_attr *attrs, size_t n);
/* First attribute of `type` in cp, or NULL. */
const ike_cp_attr *ike_cp_find(const ike_cp *cp, uint16_t type, const ike_cp_attr *after);

/* ------------------------------------------- SK: encrypted payload (§3.14) */

/*
 * The cipher interface. The codec lays out bytes and calls these; it never
 * sees keys. Sizes are fixed per negotiated algorithm:
 *   iv_len     bytes of IV in each SK/SKF payload (AES-GCM: 8, AES-CBC: 16)
 *   icv_len    bytes of ICV (AES-GCM-16: 16, HMAC-SHA2-256-128: 16)
 *   block_len  plaintext alignment incl. the Pad Length byte (CBC: 16; AEAD: 1)
 * Both callbacks return 0, or a negative M2MVPN_E_* (E_CRYPTO for a bad ICV).
 */
typedef struct ike_sk_seal_io {
    const uint8_t *aad;     /* AEAD associated data: IKE header .. end of SK
                             * generic header (SKF: .. end of Total Fragments) */
    size_t aad_len;
    uint8_t *iv;            /* callback writes a fresh IV here */
    uint8_t *text;          /* plaintext in, ciphertext out, in place */
    size_t text_len;
    uint8_t *icv;           /* callback writes the ICV here */
    const uint8_t *integ;   /* non-AEAD: integrity span, IKE header .. last
                             * ciphertext byte; valid AFTER encrypting text */
    size_t integ_len;
} ike_sk_seal_io;

typedef struct ike_sk_open_io {
    const uint8_t *aad;     /* as in seal */
    size_t aad_len;
    const uint8_t *iv;
    const uint8_t *ct;      /* ciphertext, ct_len bytes */
    size_t ct_len;
    const uint8_t *icv;
    const uint8_t *integ;   /* non-AEAD: IKE header .. last ciphertext byte */
    size_t integ_len;
    uint8_t *out;           /* plaintext, ct_len bytes (room guaranteed) */
} ike_sk_open_io;

typedef struct ike_sk_cipher {
    size_t iv_len, icv_len, block_len;
    int (*seal)(void *ctx, const ike_sk_seal_io *io);
    int (*open)(void *ctx, const ike_sk_open_io *io);
    void *ctx;
} ike_sk_cipher;

/* Offsets within the writer's buffer. */
typedef struct ike_span { size_t off, len; } ike_span;

typedef struct ike_sk_spans {
    ike_span aad;           /* header .. end of SK generic header */
    ike_span iv;
    ike_span plaintext;     /* inner chain + padding + Pad Length byte */
    ike_span icv;
    ike_span integ;         /* header .. end of plaintext (= ciphertext) */
} ike_sk_spans;

/*
 * Building a protected message in place:
 *   ike_header_build(w, &hdr);                     (hdr.next_payload = IKE_PL_SK)
 *   ike_sk_begin(&sk, w, 0, &cipher);              SK header + room for IV
 *   ... ike_build_*(&sk.inner, ...) ...            inner payloads
 *   ike_sk_finish(&sk, &spans);                    padding, Pad Length, room
 *                                                  for ICV, all lengths patched
 *   ike_sk_seal(w->p, &spans, &cipher);            or encrypt yourself by spans
 */
typedef struct ike_sk_builder {
    buf_writer *w;
    size_t hdr_at;          /* IKE header offset */
    size_t sk_at;           /* SK generic header offset */
    size_t iv_len, icv_len, block_len;
    ike_chain_writer inner;
} ike_sk_builder;

/* Starts the SK payload right after the header at `hdr_at`: the writer must
 * hold exactly that header (SK is the last and here the only outer payload;
 * the header's Next Payload is set to SK). Errors: E_INVAL (cipher sizes not
 * ike_sk_cipher_valid(), writer not right after the header, overflow). */
int ike_sk_begin(ike_sk_builder *sk, buf_writer *w, size_t hdr_at, const ike_sk_cipher *cipher);
/* Errors: E_INVAL (writer overflow or error in an inner build). */
int ike_sk_finish(ike_sk_builder *sk, ike_sk_spans *ret);
/* Run cipher->seal over the spans of a message in `msg`. */
int ike_sk_seal(uint8_t *msg, const ike_sk_spans *spans, const ike_sk_cipher *cipher);

/* The whole protected message in one go: header `hdr` (next_payload and
 * length are set here) + SK{inner chain of inner_len bytes, first payload
 * first_type}, sealed with `cipher`, appended to w. For engines that build
 * the inner chain once and then choose between SK and SKF (ike_frag_build).
 * Errors: E_INVAL (does not fit), or the cipher's error. */
int ike_sk_wrap(const ike_header *hdr, const uint8_t *inner, size_t inner_len,
                uint8_t first_type, const ike_sk_cipher *cipher, buf_writer *w);

/* Padding bytes (without the Pad Length byte) for inner_len bytes of inner
 * chain so that inner + padding + 1 is a multiple of block_len. */
size_t ike_sk_pad_len(size_t inner_len, size_t block_len);
/* Sizes within what the wire format can carry (block 1..255, IV/ICV <= 255). */
bool ike_sk_cipher_valid(const ike_sk_cipher *cipher);

/* Length of the whole message ike_sk_wrap() would produce for inner_len
 * bytes of inner chain: to decide whether to fragment. */
size_t ike_sk_message_len(size_t inner_len, const ike_sk_cipher *cipher);

/* Split a received SK payload body into IV, ciphertext, ICV. The ciphertext
 * must be non-empty and a multiple of block_len. Errors: E_PROTOCOL. */
typedef struct ike_sk_parts { buf_reader iv, ct, icv; } ike_sk_parts;
int ike_sk_split(buf_reader body, size_t iv_len, size_t icv_len, size_t block_len,
                 ike_sk_parts *ret, ike_diag *diag);
/* Validate and remove the padding from decrypted text: last byte is the Pad
 * Length, which must be < len. *inner_len = len - 1 - pad_length.
 * Errors: E_PROTOCOL. */
int ike_sk_strip_padding(const uint8_t *plain, size_t len, size_t *inner_len, ike_diag *diag);

/*
 * Decrypt the SK payload of a parsed message (its last payload) and parse the
 * inner chain, which starts with the SK's Next Payload. `out` must hold
 * ciphertext-length bytes; inner payload views point into it (offsets are
 * relative to out). Errors: E_PROTOCOL (no SK, bad layout, bad padding, bad
 * inner chain), E_CRYPTO (callback failed: do not answer, RFC 7296 §2.21.2),
 * E_INVAL (out too small).
 */
int ike_sk_open(const ike_message *msg, const ike_sk_cipher *cipher,
                uint8_t *out, size_t out_cap, ike_chain *inner, ike_diag *diag);

/* Lower level, shared by SK and SKF: decrypt the payload `pl` of message
 * `raw` whose encrypted part (IV | ciphertext | ICV) is `ct_body`; the AAD
 * runs from the message start to the end of pl's generic header plus
 * `hdr_extra` bytes (4 for SKF). Strips the padding; *inner_len is what is
 * left in out. On failure out is wiped. Errors as ike_sk_open(). */
int ike_sk_decrypt_payload(buf_reader raw, const ike_payload *pl, size_t hdr_extra,
                           buf_reader ct_body, const ike_sk_cipher *cipher,
                           uint8_t *out, size_t out_cap, size_t *inner_len, ike_diag *diag);
/* ike_chain_parse() of decrypted bytes (offsets relative to plain), which
 * must not contain another SK/SKF. Errors: E_PROTOCOL. */
int ike_inner_chain_parse(const uint8_t *plain, size_t len, uint8_t first,
                          ike_chain *ret, ike_diag *diag);

/* --------------------------------------------- fragmentation (RFC 7383) */

#define IKE_FRAG_MAX_FRAGMENTS 64
#define IKE_FRAG_MAX_TOTAL_BYTES 65536

/*
 * Split an already-built inner payload chain (inner_len bytes, first payload
 * type first_type) into SKF messages of at most max_msg_len bytes each
 * (IKE header included, non-ESP marker and UDP/IP not), all with header
 * `hdr` (its next_payload and length are overwritten), Fragment Number 1..n,
 * Total Fragments n, the real first type in fragment 1 and 0 in the others.
 * Each fragment is sealed with `cipher`. Messages are written back to back
 * into `out`; frags[i] is the span of message i. Errors: E_INVAL (does not
 * fit in out_cap or max_frags, max_msg_len too small, more than
 * IKE_FRAG_MAX_FRAGMENTS fragments), or the cipher's error.
 */
int ike_frag_build(const ike_header *hdr, const uint8_t *inner, size_t inner_len,
                   uint8_t first_type, const ike_sk_cipher *cipher, size_t max_msg_len,
                   uint8_t *out, size_t out_cap, ike_span *frags, size_t max_frags,
                   size_t *n_frags);

typedef struct ike_skf {
    uint16_t number;        /* 1..total */
    uint16_t total;
    ike_sk_parts parts;
} ike_skf;
/* Parse an SKF payload body (number/total in range, then as ike_sk_split).
 * Errors: E_PROTOCOL. */
int ike_skf_parse(buf_reader body, size_t iv_len, size_t icv_len, size_t block_len,
                  ike_skf *ret, ike_diag *diag);

/* Reassembly of one fragmented message (one message ID at a time). */
typedef struct ike_frag_reasm {
    bool active;
    uint32_t message_id;
    uint8_t exchange;
    bool response;          /* the message is a response (IKE_FLAG_RESPONSE) */
    uint16_t total;
    uint16_t received;
    uint8_t first_type;     /* Next Payload of fragment 1 */
    size_t bytes;           /* plaintext held */
    uint8_t *frag[IKE_FRAG_MAX_FRAGMENTS];  /* decrypted, padding stripped */
    size_t frag_len[IKE_FRAG_MAX_FRAGMENTS];
    uint8_t *joined;        /* after completion: the whole inner chain */
    size_t joined_len;
} ike_frag_reasm;

void ike_frag_reasm_init(ike_frag_reasm *r);
/* Drop everything (wiping the plaintext). The struct stays usable. */
void ike_frag_reasm_reset(ike_frag_reasm *r);

/*
 * Add one received message whose last payload is SKF. The fragment is
 * decrypted and authenticated first; only then is the reassembly state
 * touched (a forged fragment changes nothing). A message is its ID, its
 * exchange and its direction (a gateway request and a response with the same
 * ID are different messages). Rules (RFC 7383 §2.6):
 *  - an authentic fragment of another message than the one being reassembled
 *    drops that one and starts the new one;
 *  - duplicates are ignored;
 *  - Total Fragments greater than the stored one: the stored fragments are
 *    dropped and reassembly starts anew with this one; smaller: E_PROTOCOL;
 *  - more than IKE_FRAG_MAX_FRAGMENTS fragments or IKE_FRAG_MAX_TOTAL_BYTES of
 *    plaintext: E_PROTOCOL.
 * A fragment of the current message that arrives after completion is ignored
 * (returns 0); reset before reassembling the next message.
 * Returns 0 if more fragments are needed, 1 when the message is complete: then
 * `inner` (if not NULL) holds the parsed inner chain, views into r->joined
 * (valid until reset). Errors: E_PROTOCOL, E_CRYPTO, E_NOMEM.
 */
int ike_frag_add(ike_frag_reasm *r, const ike_message *msg, const ike_sk_cipher *cipher,
                 ike_chain *inner, ike_diag *diag);


/* ------------------------------------------------- MOBIKE (RFC 4555 §4) */

#define IKE_MOBIKE_MAX_ADDRS 8      /* ADDITIONAL_*_ADDRESS kept per message */
#define IKE_COOKIE2_MIN 8           /* COOKIE2 data: 8..64 bytes (RFC 4555 §4.2.7) */
#define IKE_COOKIE2_MAX 64
#define IKE_NATD_LEN 20             /* NAT_DETECTION_*_IP: a SHA-1 hash */

typedef struct ike_mobike_addr {
    int family;             /* AF_INET or AF_INET6 */
    uint8_t addr[16];       /* 4 or 16 bytes used */
} ike_mobike_addr;

/* What one message's Notify payloads say for MOBIKE and NAT detection. */
typedef struct ike_mobike_info {
    bool supported;         /* MOBIKE_SUPPORTED */
    bool update;            /* UPDATE_SA_ADDRESSES */
    bool no_additional;     /* NO_ADDITIONAL_ADDRESSES */
    ike_mobike_addr addrs[IKE_MOBIKE_MAX_ADDRS]; /* ADDITIONAL_IP4/6_ADDRESS, in order */
    size_t n_addrs;
    size_t n_addrs_skipped; /* more than IKE_MOBIKE_MAX_ADDRS */
    bool has_cookie2;
    buf_reader cookie2;     /* view into the chain's bytes */
    bool has_natd_src, has_natd_dst;
    uint8_t natd_src[IKE_NATD_LEN], natd_dst[IKE_NATD_LEN]; /* the first of each */
    uint16_t error;         /* UNACCEPTABLE_ADDRESSES, UNEXPECTED_NAT_DETECTED, NO_NATS_ALLOWED, or 0 */
} ike_mobike_info;

/* Collect the MOBIKE notifies of a (decrypted) chain. Every one is checked
 * against its RFC size: ADDITIONAL_IP4_ADDRESS 4 bytes, ADDITIONAL_IP6_ADDRESS
 * 16 (not unspecified, loopback, multicast or link-local: §4.2.2 addresses a
 * peer may use), COOKIE2 8..64, NAT_DETECTION_* 20, the flags empty.
 * Errors: E_PROTOCOL (a malformed one; diag says which). */
int ike_mobike_scan(const ike_chain *c, ike_mobike_info *ret, ike_diag *diag);
/* ADDITIONAL_IP4_ADDRESS or ADDITIONAL_IP6_ADDRESS for addr (by family). */
void ike_build_additional_address(ike_chain_writer *cw, const ike_mobike_addr *addr);

#endif
