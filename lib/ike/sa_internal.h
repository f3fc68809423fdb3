/* SPDX-License-Identifier: Apache-2.0 */
/* Private to lib/ike: the IKE SA and the functions its exchange files share. */
#ifndef M2MVPN_IKE_SA_INTERNAL_H
#define M2MVPN_IKE_SA_INTERNAL_H

#include "codec.h"
#include "crypto/crypto.h"
#include "ike.h"

#define IKE_MSG_MAX 65536          /* largest message we build or reassemble */
#define IKE_NONCE_LEN 32
#define IKE_FRAG_MTU 1280          /* RFC 7383 §2.5.1: safe datagram size for IPv4 paths */
#define IKE_MAX_OUT_FRAGS 32
#define IKE_RETRANSMIT_MAX_S 600.0    /* longest wait between two retransmissions */
#define IKE_INIT_ERROR_GRACE_MS 2000  /* wait for a valid answer after an unauthenticated error */

typedef enum ike_sa_state {
    IKE_SA_IDLE,
    IKE_SA_INIT_SENT,
    IKE_SA_AUTH_SENT,
    IKE_SA_ESTABLISHED,
    IKE_SA_DELETING,
    IKE_SA_DOWN,
} ike_sa_state;

typedef enum ike_task {
    IKE_TASK_NONE,
    IKE_TASK_INIT,
    IKE_TASK_AUTH,
    IKE_TASK_DPD,
    IKE_TASK_DELETE,
} ike_task;

/* The one outstanding request (window size 1), as sent: for retransmission. */
typedef struct ike_request {
    ike_task task;
    uint32_t message_id;
    uint8_t *buf;                  /* every datagram back to back */
    ike_span dgram[IKE_MAX_OUT_FRAGS];
    size_t n_dgram;
    bool natt;
    unsigned tries;                /* retransmissions done */
} ike_request;

struct ike_sa {
    core_loop *loop;
    core_log *log;
    ike_config cfg;
    ike_hooks hooks;
    ike_sa_state state;
    char gw_text[64];              /* "198.51.100.1:500" for messages */

    uint8_t spi_i[8], spi_r[8];
    crypto_ke *ke;
    uint16_t ke_group;
    bool ke_retried;               /* INVALID_KE_PAYLOAD handled once */
    uint8_t nonce_i[IKE_NONCE_LEN];
    uint8_t nonce_r[IKE_NONCE_MAX];
    size_t nonce_r_len;
    int init_error;                /* unauthenticated error answer to IKE_SA_INIT, pending */
    char init_error_text[512];
    uint8_t natd_src[20];          /* NAT_DETECTION_SOURCE_IP we send: random, drawn
                                    * once, so a COOKIE retry repeats it (RFC 7296 §2.6) */
    uint8_t cookie[64];
    size_t cookie_len;
    unsigned cookie_tries;

    uint8_t *init_req;             /* our last IKE_SA_INIT request (RealMessage1) */
    size_t init_req_len;
    uint8_t *init_resp;            /* the gateway's response (RealMessage2) */
    size_t init_resp_len;

    crypto_suite suite;            /* negotiated IKE transforms */
    crypto_ike_keys *keys;
    crypto_cipher *seal_ctx;       /* SK_ei: what we send */
    crypto_cipher *open_ctx;       /* SK_er: what we receive */
    ike_sk_cipher sk_out, sk_in;   /* codec adapters over the two above */

    bool natt;                     /* IKE on port 4500 from IKE_AUTH on */
    bool nat_here;                 /* NAT detected in front of us */
    bool peer_frag;                /* gateway announced IKEV2_FRAGMENTATION_SUPPORTED */
    uint16_t peer_hashes[8];       /* SIGNATURE_HASH_ALGORITHMS */
    size_t n_peer_hashes;
    ike_frag_reasm reasm;

    uint32_t next_msg_id;          /* our next request */
    uint32_t peer_msg_id;          /* the gateway's next request we expect */
    uint8_t *last_resp;            /* our last response, for retransmitted requests */
    size_t last_resp_len;
    ike_request req;
    core_timer retransmit_timer;
    core_timer dpd_timer;
    uint64_t last_heard_ms;

    /* EAP in IKE_AUTH (auth_eap.c) */
    struct eap_peer *eap;
    uint8_t eap_phase;             /* IKE_EAP_PHASE_* */
    uint8_t *eap_idi;              /* our ID body (signed by the final AUTH) */
    size_t eap_idi_len;
    uint8_t *eap_idr;              /* the gateway's ID body from its first answer */
    size_t eap_idr_len;

    /* CHILD SA */
    uint32_t child_spi_in;
    uint32_t child_spi_out;
    ike_sa_choice esp_choice;
    char ike_alg[96], esp_alg[96];
};

/* sa.c */
void ike_sa_set_state(ike_sa *sa, ike_sa_state st);
const char *ike_sa_state_name(ike_sa_state st);
/* Fail the SA: log, send nothing more, report on_down(err, fault, detail).
 * ike_sa_fail is for what the gateway sent or did (IKE_FAULT_PEER: the
 * supervisor tries again); ike_sa_fail_local for causes on our side alone
 * (IKE_FAULT_LOCAL: the profile, our credentials, our build). */
void ike_sa_fail(ike_sa *sa, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void ike_sa_fail_local(ike_sa *sa, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* IKE_SA_INIT answered with an error notify, or with anything malformed or
 * unacceptable, none of which is authenticated (RFC 7296 §2.21.1): remember
 * it and keep waiting a short while for a valid answer (a forged one must not
 * end the attempt); then fail (IKE_FAULT_PEER). */
void ike_sa_init_error(ike_sa *sa, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Send a new request (takes the built datagrams in buf, owned afterwards). */
int ike_sa_send_request(ike_sa *sa, ike_task task, uint8_t *buf, const ike_span *dgram,
                        size_t n_dgram);
void ike_sa_request_done(ike_sa *sa);
/* Build header + SK{inner chain} (fragmented if needed) and send it as a
 * request or a response; `inner` is a free-standing chain of first_type. */
int ike_sa_send_protected(ike_sa *sa, uint8_t exchange, bool response, uint32_t message_id,
                          const uint8_t *inner, size_t inner_len, uint8_t first_type, ike_task task);
void ike_sa_header(const ike_sa *sa, ike_header *hdr, uint8_t exchange, bool response,
                   uint32_t message_id);
/* Install keys after IKE_SA_INIT and the SK adapters. */
int ike_sa_install_keys(ike_sa *sa, const uint8_t *g_ir, size_t g_ir_len, char *err, size_t err_len);

/* auth.c */
/* The AUTH method and signature scheme for our key of type kt, given the
 * hashes the gateway announced (RFC 7427) and the profile's SHA-1 rule. On
 * failure: whose fault (the gateway's when our key could sign with hashes it
 * did not announce: a forger can leave them out) and why, in err. */
int ike_auth_choose(const ike_sa *sa, pki_key_type kt, const uint16_t *peer_hashes, size_t n_peer_hashes,
                    pki_auth_method *method, pki_sig_scheme *scheme, ike_fault *fault, char *err, size_t err_len);

/* init.c */
bool ike_choice_offered(const ike_sa_choice *c, const proposal *props, size_t n, bool ike);
int ike_init_start(ike_sa *sa);
void ike_init_process(ike_sa *sa, const ike_message *msg);

/* auth.c */
int ike_auth_start(ike_sa *sa);
void ike_auth_process(ike_sa *sa, const ike_chain *inner);
/* prf(SK_p, ID body) and the octets an AUTH payload signs (RFC 7296 §2.15). */
int ike_auth_octets(ike_sa *sa, bool ours, const uint8_t *id_body, size_t id_len,
                    uint8_t **ret, size_t *ret_len);

/* Verify the gateway's IDr and AUTH (signature or PSK) in c. 0 when it is
 * who the profile says; else why in err. */
int ike_auth_verify_gateway(ike_sa *sa, const ike_chain *c, char *err, size_t err_len);
/* The CHILD SA part of the last IKE_AUTH response: establish or fail. */
void ike_auth_establish(ike_sa *sa, const ike_chain *c);

/* auth_eap.c: EAP in IKE_AUTH (RFC 7296 §2.16) */
enum { IKE_EAP_PHASE_NONE, IKE_EAP_PHASE_FIRST, IKE_EAP_PHASE_EAP, IKE_EAP_PHASE_AUTH };
/* Set up the EAP peer and remember our ID body before the first request. */
int ike_eap_begin(ike_sa *sa, const uint8_t *idi_body, size_t len, char *err, size_t err_len);
void ike_eap_process(ike_sa *sa, const ike_chain *c);
/* Wipe and free the EAP state. */
void ike_eap_end(ike_sa *sa);

/* info.c */
void ike_info_process_request(ike_sa *sa, const ike_header *hdr, const ike_chain *inner);
void ike_info_process_response(ike_sa *sa, const ike_chain *inner);
void ike_info_dpd(void *arg);
int ike_info_send_delete(ike_sa *sa);
/* INFORMATIONAL{[N(AUTHENTICATION_FAILED),] D(IKE)}, sent once, no answer
 * awaited: the gateway drops its half of an SA we give up on. */
void ike_info_send_final(ike_sa *sa, bool auth_failed);

#endif
