/* SPDX-License-Identifier: Apache-2.0 */
/* Private to lib/ike: the IKE SA and the functions its exchange files share. */
#ifndef M2MVPN_IKE_SA_INTERNAL_H
#define M2MVPN_IKE_SA_INTERNAL_H

#include "codec.h"
#include "crypto/crypto.h"
#include "ike.h"
#include "task.h"

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

/* MOBIKE (RFC 4555, mobike.c). */
typedef struct ike_mobike {
    bool peer;                     /* the gateway announced MOBIKE_SUPPORTED (authenticated) */
    bool update_ours;              /* asked for by ike_sa_update_addresses (else: NAT mapping) */
    char reason[160];              /* why (for the hook) */
    uint8_t cookie2[16];           /* of the update under way (return routability, §3.5) */
    ike_mobike_addr addrs[IKE_MOBIKE_MAX_ADDRS]; /* the gateway's other addresses */
    size_t n_addrs;
    bool addrs_set;                /* the gateway sent a list (or NO_ADDITIONAL_ADDRESSES) */
    /* NAT_DETECTION_DESTINATION_IP the gateway last sent (our address as it
     * sees it), under the IKE SA's SPIs then: a change is a new NAT mapping. */
    uint8_t natd_seen[IKE_NATD_LEN];
    uint8_t natd_spis[16];
    bool natd_seen_set;
    /* Gateway failover (§3.5, §3.8): a request the gateway's address no
     * longer answers is sent to its other addresses in turn; the first
     * authenticated answer from the address it went to makes that address
     * tentative: UPDATE_SA_ADDRESSES goes there, and only its successful
     * answer (COOKIE2, from fo_to) makes it the gateway's. */
    bool fo_probing;               /* the request under way goes to fo_to (cleared when it ends) */
    bool fo_update;                /* the failover's update to fo_to is queued or under way */
    size_t fo_next;                /* the next of addrs to try */
    struct sockaddr_storage fo_to; /* port 4500 */
    socklen_t fo_to_len;
    char fo_from[64];              /* the address that stopped answering */
    bool fo_moved;                 /* the gateway is no longer where lib/conn sends: hooks.send_to */
} ike_mobike;

/* Our last response as sent, every datagram of it, for the gateway's
 * retransmitted request (RFC 7296 §2.1): a fragmented one is resent whole
 * (RFC 7383 §2.6). Ciphertext only; the next response replaces it. (A
 * zombie also keeps a request the switch abandoned in one.) */
typedef struct ike_resp_cache {
    uint8_t *buf;                  /* every datagram back to back */
    ike_span dgram[IKE_MAX_OUT_FRAGS];
    size_t n_dgram;
} ike_resp_cache;

#define IKE_MAX_RETIRING 4         /* replaced CHILD SAs not yet deleted */
#define IKE_MAX_ZOMBIES 3          /* replaced IKE SAs not yet deleted */

/* A CHILD SA on its way out after a rekey: still in the datapath (inbound)
 * until the Delete exchange is over and a short grace has passed. */
typedef struct ike_retiring {
    uint32_t spi_in, spi_out;
    bool we_delete;                /* we send the Delete (else we wait for the gateway's) */
    bool delete_sent;              /* our Delete is queued or out */
    uint64_t deadline_ms;          /* then: delete it ourselves (waiting) or drop it (done) */
    bool done;                     /* deleted both ways: only the grace is left */
    bool installed;                /* reported to on_child_rekeyed (a collision loser
                                    * of ours never was) */
} ike_retiring;

/* A replaced IKE SA (RFC 7296 §2.18): kept with its keys only to finish the
 * Delete exchange on it, whichever side sends it. */
typedef struct ike_zombie {
    bool active;
    bool initiator;                /* we were its original initiator */
    bool we_delete;
    uint8_t spi_i[8], spi_r[8];
    crypto_cipher *seal_ctx, *open_ctx;
    ike_sk_cipher sk_out, sk_in;
    uint32_t next_msg_id, peer_msg_id;
    ike_resp_cache last_resp;      /* our last answer on it, for retransmitted requests */
    uint8_t *req;                  /* our Delete, for retransmission */
    size_t req_len;
    uint32_t req_id;
    uint8_t req_exchange;          /* its exchange type: the answer's must be the same */
    /* Our request the switch abandoned (a liveness check), as sent: it
     * keeps its message ID, the one the gateway's window waits for (RFC
     * 7296 §2.3), so it goes again before the Delete, which follows its
     * answer or its last try. */
    ike_resp_cache held;
    uint32_t held_id;
    uint8_t held_exchange;
    unsigned tries;
    uint64_t deadline_ms;          /* give up on it then */
} ike_zombie;

/* Everything a CREATE_CHILD_SA exchange produced for a new IKE SA, before it
 * replaces the current one. */
typedef struct ike_new_ike {
    bool initiator;
    uint8_t spi_i[8], spi_r[8];
    crypto_suite suite;
    uint16_t ke_group;
    crypto_ike_keys *keys;
    uint8_t min_nonce[IKE_NONCE_MAX]; /* lowest nonce of its exchange (§2.8.1) */
    size_t min_nonce_len;
} ike_new_ike;

/* The one outstanding request (window size 1), as sent: for retransmission. */
typedef struct ike_request {
    ike_task task;                 /* the active task, IKE_TASK_NONE when the window is free */
    uint32_t message_id;
    uint8_t exchange;              /* its exchange type: the answer's must be the same */
    uint8_t *buf;                  /* every datagram back to back */
    ike_span dgram[IKE_MAX_OUT_FRAGS];
    size_t n_dgram;
    bool natt;
    unsigned tries;                /* retransmissions done */
    bool failover;                 /* MOBIKE: the failover's update, to fo_to (kept
                                    * after it ends, for its answer's task) */
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
    /* The request an INVALID_KE_PAYLOAD made us replace (its key pair and
     * bytes): that notify is unauthenticated, so a valid answer to the
     * first request still counts (a forged notify must not downgrade the
     * group, nor throw the real answer away). */
    crypto_ke *prev_ke;
    uint16_t prev_ke_group;
    uint8_t *prev_init_req;
    size_t prev_init_req_len;
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
    ike_resp_cache last_resp;      /* our last response, for retransmitted requests */
    ike_request req;
    uint32_t tasks_queued;         /* 1 << ike_task: waiting for the window (task.h) */
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
    bool initiator;                /* we are the original initiator of this IKE SA
                                    * (false after a rekey the gateway started) */

    /* CHILD SA */
    uint32_t child_spi_in;
    uint32_t child_spi_out;
    ike_ts child_tsi[IKE_MAX_TS], child_tsr[IKE_MAX_TS]; /* as negotiated, ours | theirs */
    size_t n_child_tsi, n_child_tsr;

    /* Rekeying (rekey*.c, RFC 7296 §1.3, §2.8) */
    core_timer rekey_timer;        /* IKE SA lifetime, retries, grace periods */
    uint64_t ike_rekey_at_ms;      /* 0: none planned */
    uint64_t child_retry_at_ms;    /* a failed CHILD rekey is tried again then */
    uint64_t quiet_until_ms;       /* no request of ours on an IKE SA the gateway just
                                    * created before then (it may not have it yet) */
    struct {
        uint32_t queued_spi_in;    /* the SA our queued rekey is for (moot once it is
                                    * no longer the current one) */
        uint32_t old_spi_in, old_spi_out; /* the SA being rekeyed */
        uint32_t new_spi_in;
        uint8_t nonce[IKE_NONCE_LEN];
        crypto_ke *ke;
        uint16_t group;
        bool ke_retried;
        /* The gateway rekeyed the same SA meanwhile (§2.8.1): its SA. */
        bool collided;
        bool moot;                 /* the gateway settled the collision already: our
                                    * SA, if the answer still brings one, is redundant */
        uint32_t peer_spi_in, peer_spi_out;
        uint8_t peer_min_nonce[IKE_NONCE_MAX];
        size_t peer_min_nonce_len;
    } rk;
    struct {
        uint8_t spi[8];            /* our SPI for the new IKE SA */
        uint8_t nonce[IKE_NONCE_LEN];
        crypto_ke *ke;
        bool ke_retried;
        ike_new_ike peer;          /* the gateway's own IKE rekey answered meanwhile */
        bool collided;
    } rki;
    ike_retiring retiring[IKE_MAX_RETIRING];
    size_t n_retiring;
    ike_zombie zombie[IKE_MAX_ZOMBIES];
    ike_sa_choice esp_choice;
    char ike_alg[96], esp_alg[96];
    ike_mobike mobike;
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
/* Cache a response (takes buf, the n datagrams in it back to back; the
 * cached one before is freed), drop one, resend one whole. */
void ike_resp_cache_set(ike_resp_cache *c, uint8_t *buf, const ike_span *dgram, size_t n);
void ike_resp_cache_free(ike_resp_cache *c);
void ike_sa_resend_response(ike_sa *sa, const ike_resp_cache *c);
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
/* Ciphers for keys (SK_e/SK_a in our sending/receiving direction). */
int ike_sa_make_ciphers(const crypto_suite *suite, const crypto_ike_keys *keys, bool initiator,
                        crypto_cipher **seal, crypto_cipher **open);
void ike_sa_sk_adapter(ike_sk_cipher *a, crypto_cipher *c, bool seal);
uint64_t ike_sa_spi_be64(const uint8_t spi[8]);

/* auth.c */
/* The AUTH method and signature scheme for our key of type kt, given the
 * hashes the gateway announced (RFC 7427) and the profile's SHA-1 rule. On
 * failure: whose fault (the gateway's when our key could sign with hashes it
 * did not announce: a forger can leave them out) and why, in err. */
int ike_auth_choose(const ike_sa *sa, pki_key_type kt, const uint16_t *peer_hashes, size_t n_peer_hashes,
                    pki_auth_method *method, pki_sig_scheme *scheme, ike_fault *fault, char *err, size_t err_len);

/* init.c */
bool ike_choice_offered(const ike_sa_choice *c, const proposal *props, size_t n, bool ike);
bool ike_choice_keeps_pfs(const ike_sa_choice *c, const proposal *props, size_t n);

/* auth.c */
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

/* rekey.c */
void ike_rekey_init(ike_sa *sa);
void ike_rekey_free(ike_sa *sa);
/* The SA is established (IKE_AUTH or an IKE rekey): plan the IKE SA rekey. */
void ike_rekey_plan_ike(ike_sa *sa);
/* An authenticated message arrived on the current IKE SA. */
void ike_rekey_heard(ike_sa *sa);
/* CREATE_CHILD_SA from the gateway: answered here. */
void ike_rekey_process_request(ike_sa *sa, const ike_header *hdr, const ike_chain *inner);
/* Delete(ESP) of `spi` (our outbound SPI) from the gateway: 1 if it named a
 * retiring or not yet current SA (our half goes into `our_spi`), else 0. */
int ike_rekey_peer_deleted(ike_sa *sa, uint32_t spi, uint32_t *our_spi);
/* The gateway deleted the current IKE SA: 1 when that settles a rekey
 * collision (we moved to the gateway's new IKE SA), 0 when it is an end, <0
 * when the move failed. Call after answering the Delete. */
int ike_rekey_peer_deleted_ike(ike_sa *sa);
/* A datagram for one of the replaced IKE SAs? Handled (1) or not (0). */
int ike_rekey_zombie_input(ike_sa *sa, const ike_message *msg, uint8_t *plain, size_t cap);
/* Before on_down: report every retiring CHILD SA gone. */
void ike_rekey_drop_all(ike_sa *sa);

/* auth.c: the CHILD SA from an answer (IKE_AUTH or CREATE_CHILD_SA). */
int ike_child_from_answer(ike_sa *sa, const ike_chain *c, const uint8_t *ni, size_t ni_len,
                          const uint8_t *nr, size_t nr_len, const uint8_t *g_ir, size_t g_ir_len,
                          bool need_cp, uint32_t spi_in, ike_child_result *res,
                          crypto_child_keys **keys, char *err, size_t err_len);
/* KEYMAT for the datapath: what we send with first (RFC 7296 §2.17 order
 * when we initiated the exchange, the halves swapped when the gateway did). */
size_t ike_child_keymat(const crypto_child_keys *keys, bool we_initiated, uint8_t *out, size_t cap);
void ike_build_ts_list(ike_ts *out, size_t *n, const profile_ts *ts, size_t n_ts);

/* init.c: NAT_DETECTION_*_IP data, SHA-1(SPIi | SPIr | IP | port) (RFC 7296 §2.23). */
int ike_natd_hash(const ike_sa *sa, const uint8_t spi_r[8], const struct sockaddr_storage *ss, uint8_t out[20]);

/* mobike.c (RFC 4555) */
/* IKE_AUTH request: MOBIKE_SUPPORTED when the profile wants it. */
void ike_mobike_build_auth(ike_sa *sa, ike_chain_writer *cw);
/* The last (authenticated) IKE_AUTH response: the gateway's support and addresses. */
void ike_mobike_process_auth(ike_sa *sa, const ike_chain *c);
/* The gateway's INFORMATIONAL request (authenticated): its address list. */
void ike_mobike_process_request(ike_sa *sa, const ike_chain *c);
/* A liveness check carries NAT detection under MOBIKE (a NAT mapping change
 * shows in the answer). */
void ike_mobike_build_dpd(ike_sa *sa, ike_chain_writer *cw);
void ike_mobike_process_dpd(ike_sa *sa, const ike_chain *c);
/* The request under way went unanswered to the end: send it to the
 * gateway's next other address (true), or none is left (false: the SA
 * fails as before). */
bool ike_mobike_failover(ike_sa *sa);
/* An authenticated answer arrived from the address being probed: the
 * update is queued, to go there (the gateway moves only once it succeeds). */
void ike_mobike_failover_answered(ike_sa *sa);
/* The datagram came from the address being probed (host and port; A and
 * ::ffff:A are the same host). */
bool ike_mobike_from_probed(const ike_sa *sa, const struct sockaddr *from, socklen_t from_len);
/* The datagram came from cfg.remote, the gateway's IKE port (host and port). */
bool ike_sa_from_remote(const ike_sa *sa, const struct sockaddr *from, socklen_t from_len);
/* Send one datagram to the gateway where it is now (hooks.send, or
 * hooks.send_to after a failover); a request of ours to the address being
 * probed while failing over, a response always where the gateway is now. */
int ike_sa_send_dgram(ike_sa *sa, const uint8_t *msg, size_t len, bool natt);
/* "198.51.100.1:500", "[2001:db8::1]:500" */
void ike_sa_format_addr(const struct sockaddr_storage *ss, char *out, size_t len);
#define IKE_FAILOVER_TRIES 2       /* retransmits to each of the gateway's other addresses */

/* info.c */
void ike_info_process_request(ike_sa *sa, const ike_header *hdr, const ike_chain *inner);
/* dpd_timer: queue a liveness check (sent when the gateway has been quiet a period). */
void ike_info_dpd(void *arg);
/* INFORMATIONAL{[N(AUTHENTICATION_FAILED),] D(IKE)}, sent once, no answer
 * awaited: the gateway drops its half of an SA we give up on. */
void ike_info_send_final(ike_sa *sa, bool auth_failed);

#endif
