/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The EAP peer inside IKE_AUTH (RFC 7296 §2.16, RFC 3748): EAP-Identity,
 * EAP-MSCHAPv2 (RFC 2759 carried as in draft-kamath-pppext-eap-mschapv2) and
 * EAP-MD5 (RFC 3748 §5.4).
 *
 * The peer is a strict state machine: each message is accepted only in the
 * state that expects it, and anything else ends the exchange (the classes of
 * CVE-2021-45079 and CVE-2015-4171: a Success before the method finished, a
 * method switched half-way, a message the state does not expect):
 *
 *   START ──Request/Identity──▶ IDENTITY_SENT ──Request/<method>──▶ METHOD
 *   (START also takes Request/<method> directly)
 *   MSCHAPv2: METHOD (Response sent) ──Request/MSCHAPv2-Success with a
 *             verified authenticator response──▶ SUCCESS_ACKED ──EAP-Success──▶ DONE
 *   MD5:      METHOD (Response sent) ──EAP-Success──▶ DONE
 *   A Notification request (RFC 3748 §5.2) is acknowledged in any state
 *   before DONE and changes nothing.
 *
 * An EAP-Failure, an MSCHAPv2 Failure request, an EAP-Success in any state
 * but the last, a method other than the configured one: M2MVPN_E_AUTH_LOCAL.
 * An MSCHAPv2 authenticator response that does not verify (the gateway does
 * not know the password, or was not the one we talked to):
 * M2MVPN_E_AUTH_PEER. A malformed packet: M2MVPN_E_PROTOCOL. After any error
 * the peer stays failed and refuses everything.
 *
 * The password is copied at creation and wiped with the peer; the NT hash
 * and the MSK are wiped too. No function puts a secret into `err`.
 */
#ifndef M2MVPN_IKE_EAP_H
#define M2MVPN_IKE_EAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define EAP_TYPE_IDENTITY 1
#define EAP_TYPE_NOTIFICATION 2
#define EAP_TYPE_NAK 3
#define EAP_TYPE_MD5 4
#define EAP_TYPE_MSCHAPV2 26

#define EAP_MSK_MAX 64
#define EAP_MAX_PACKET 1024        /* largest response we build */

typedef enum eap_method { EAP_METHOD_MSCHAPV2, EAP_METHOD_MD5 } eap_method;

typedef enum eap_peer_state {
    EAP_PEER_START,
    EAP_PEER_IDENTITY_SENT,
    EAP_PEER_METHOD,           /* our method response is out */
    EAP_PEER_SUCCESS_ACKED,    /* MSCHAPv2: authenticator verified, ack sent */
    EAP_PEER_DONE,             /* EAP-Success accepted: MSK ready */
    EAP_PEER_FAILED,
} eap_peer_state;

/* What eap_peer_process() asks of the caller. */
typedef enum eap_step {
    EAP_STEP_SEND = 1,         /* send the response in out */
    EAP_STEP_DONE = 2,         /* EAP-Success: authentication finished */
} eap_step;

typedef struct eap_peer eap_peer;

/* Name of a state, a method ("mschapv2", "md5") and an EAP type. */
const char *eap_peer_state_name(eap_peer_state st);
const char *eap_method_name(eap_method m);
const char *eap_type_name(unsigned type);

/* A new peer. identity: 1..255 bytes of user name; password: 1..256 bytes
 * (copied). Errors: INVAL, NOMEM. */
int eap_peer_new(eap_method method, const char *identity, const char *password, size_t password_len,
                 eap_peer **ret);
/* Wipe and free. NULL is fine. */
void eap_peer_free(eap_peer *p);
eap_peer_state eap_peer_get_state(const eap_peer *p);
/* Did the gateway refuse our credentials (EAP-Failure, MSCHAPv2 Failure)?
 * Only then is an AUTH_LOCAL failure about the password: a protocol
 * violation (a premature EAP-Success, another method) is also AUTH_LOCAL,
 * but the gateway's doing, and says nothing about the credentials. */
bool eap_peer_refused(const eap_peer *p);

/* One EAP packet from the gateway (code..data, `len` bytes). Returns
 * EAP_STEP_SEND with the response in out[cap] (*out_len), EAP_STEP_DONE, or
 * a negative error (see above) with a reason in err. */
int eap_peer_process(eap_peer *p, const uint8_t *pkt, size_t len, uint8_t *out, size_t cap,
                     size_t *out_len, char *err, size_t err_len);

/* The MSK after EAP_STEP_DONE (RFC 7296 §2.16: the AUTH key). *len 0 for a
 * method without keys (EAP-MD5): then SK_pi/SK_pr are used. Borrowed. */
void eap_peer_msk(const eap_peer *p, const uint8_t **msk, size_t *len);

/* ------------------------------- MSCHAPv2 computations (RFC 2759 §8, RFC 3079 §3) */

/* NtPasswordHash: MD4 of the password as UTF-16LE (decoded from UTF-8;
 * INVAL for invalid UTF-8). */
int eap_mschapv2_nt_hash(const char *password, size_t len, uint8_t out[16]);
int eap_mschapv2_challenge_hash(const uint8_t peer_challenge[16], const uint8_t auth_challenge[16],
                                const char *user, uint8_t out[8]);
int eap_mschapv2_nt_response(const uint8_t auth_challenge[16], const uint8_t peer_challenge[16],
                             const char *user, const uint8_t nt_hash[16], uint8_t out[24]);
/* "S=" and 40 upper-case hex digits, NUL-terminated (43 bytes). */
int eap_mschapv2_authenticator_response(const uint8_t nt_hash[16], const uint8_t nt_response[24],
                                        const uint8_t peer_challenge[16],
                                        const uint8_t auth_challenge[16], const char *user,
                                        char out[43]);
int eap_mschapv2_master_key(const uint8_t nt_hash[16], const uint8_t nt_response[24], uint8_t out[16]);
/* MSK = the peer's send start key | its receive start key (RFC 3079 §3.4, 16 bytes each). */
int eap_mschapv2_msk(const uint8_t nt_hash[16], const uint8_t nt_response[24], uint8_t out[32]);

/* EAP-MD5 value: MD5(identifier | password | challenge) (RFC 1994 §4.1). */
int eap_md5_value(uint8_t identifier, const char *password, size_t password_len,
                  const uint8_t *challenge, size_t challenge_len, uint8_t out[16]);

#endif
