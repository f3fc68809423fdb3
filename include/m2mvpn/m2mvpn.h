/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libm2mvpn — an embeddable IKEv2/IPsec VPN client for unattended machines.
 *
 * This is the one public header. Everything here is a stable contract:
 *  - every call returns 0 or a negative M2MVPN_E_* code (errors are only appended);
 *  - public structs start with `size_t struct_size` and only ever grow at the end;
 *  - strings and buffers passed in are copied; nothing the caller passes is kept;
 *  - secrets (password, PIN, PSK) are wiped from library memory after use and
 *    never logged;
 *  - control calls are thread-safe and non-blocking: they queue a command for
 *    the engine and return. Callbacks run on the engine thread and may call any
 *    control call; not m2mvpn_free() (refused), nor m2mvpn_start(),
 *    m2mvpn_process(), m2mvpn_get_fd(), m2mvpn_get_timeout_ms() (CALLBACK);
 *  - no variadic functions (ctypes and other FFIs cannot call them portably).
 *
 * API changelog (one symbol-map node per release, see lib/libm2mvpn.sym):
 *  1.0 (M2MVPN_1.0)  first release: handle, profiles (load, switch, unload),
 *                    connect/disconnect, PIN, events, status (struct with
 *                    algorithms, and JSON), engine drive (own thread or
 *                    external loop), logging, errors, names of errors,
 *                    states and events.
 *                    Appended since the first 1.0 header (no new symbols):
 *                    - m2mvpn_status.warnings and the "warnings" array of
 *                      m2mvpn_status_json: settings of the active profile
 *                      that work but weaken it (a PSK shorter than 20
 *                      characters);
 *                    - m2mvpn_status.credential_source, credential,
 *                      cert_subject, cert_not_after (hardware credentials:
 *                      token label / TPM key, certificate expiry) and the
 *                      status JSON's "credential";
 *                    - then m2mvpn_status.reconnects, rekeys, roams,
 *                      last_change, last_reason and the "transitions"
 *                      object of m2mvpn_status_json: how often the
 *                      tunnel came back, and when and why its state
 *                      last moved;
 *                    - m2mvpn_status.virtual_ip may hold an IPv6 address (a
 *                      tunnel with an IPv6 virtual IP and no IPv4 one).
 *  1.1 (M2MVPN_1.1)  m2mvpn_bind_key (machine-bound certificate keys);
 *                    m2mvpn_set_credentials does EAP (MSCHAPv2, MD5)
 *                    instead of returning NOTSUPP.
 *                    No signature changed since: m2mvpn_profile_switch is
 *                    make-before-break where the running tunnel allows it
 *                    (a STATE_CHANGED says "make-before-break" or
 *                    "break-before-make: why"); m2mvpn_status.rekeys counts
 *                    reauthentications (profile ike.reauth_s) too.
 *  1.2 (M2MVPN_1.2)  management (bootstrap profiles with "management"):
 *                    m2mvpn_set_state_dir; event ENROLLED (10), and
 *                    CONFIG_UPDATED now sent; errors TOKEN, PENDING,
 *                    SERVER_CERT, BUNDLE, ENROL; the status JSON's
 *                    "management" object. Day 1..N: UPDATE_AVAILABLE sent
 *                    (detail "<version> <path>" of a verified update file),
 *                    m2mvpn_update_result; "management.cert_refused".
 *                    No signature changed: MOBIKE roaming (RFC 4555); event
 *                    ROAMED (4) now sent, m2mvpn_status.roams counts the
 *                    moves (address, interface or NAT mapping).
 *  1.3 (M2MVPN_1.3)  m2mvpn_decommission (CMP RR for the device's own
 *                    certificate, then the credential removed); event
 *                    DECOMMISSIONED (11); error DECOMMISSION (-30); the
 *                    status JSON's "management.state" may be
 *                    "decommissioned";
 *                    m2mvpn_profile_switch to a profile on another gateway
 *                    is make-before-break too (a STATE_CHANGED says
 *                    "make-before-break", or "shortest gap (virtual IP
 *                    NEW, was OLD)" when that gateway assigns another one).
 */
#ifndef M2MVPN_M2MVPN_H
#define M2MVPN_M2MVPN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) && defined(M2MVPN_BUILDING_LIBRARY)
#define M2MVPN_API __attribute__((visibility("default")))
#else
#define M2MVPN_API
#endif

/* ---------------------------------------------------------------- version */

/* M2MVPN_VERSION_MAJOR/MINOR/PATCH, M2MVPN_VERSION_STRING and M2MVPN_VERSION_NUM
 * (0xMMmmpp, for compile-time checks) come from the generated version.h. */
#include <m2mvpn/version.h>

/* ----------------------------------------------------------------- errors */

/*
 * The one error table. Each row: name, value, message. Values are negative,
 * stable, and new rows are only ever appended (never renumber, never remove).
 */
#define M2MVPN_ERROR_MAP(XX)                                                   \
    XX(INVAL,       -1,  "invalid argument")                                  \
    XX(NOMEM,       -2,  "out of memory")                                     \
    XX(NOTSUPP,     -3,  "not supported by this build or not yet implemented") \
    XX(BADHANDLE,   -4,  "not a valid m2mvpn handle")                         \
    XX(STATE,       -5,  "call not allowed in the current state")             \
    XX(BUSY,        -6,  "engine already driven another way")                 \
    XX(IO,          -7,  "input/output error")                                \
    XX(PROFILE,     -8,  "invalid profile")                                   \
    XX(NOPROFILE,   -9,  "no such profile")                                   \
    XX(JSON,        -10, "malformed JSON")                                    \
    XX(SYSTEM,      -11, "system call failed")                                \
    XX(CALLBACK,    -12, "call not allowed from a callback")                  \
    XX(TIMEOUT,     -13, "peer did not answer")                               \
    XX(NO_PROPOSAL, -14, "no proposal chosen")                                \
    XX(AUTH_LOCAL,  -15, "our authentication was rejected by the gateway")    \
    XX(AUTH_PEER,   -16, "the gateway could not be authenticated")            \
    XX(TS_UNACCEPTABLE, -17, "traffic selectors unacceptable")                \
    XX(PROTOCOL,    -18, "protocol error from the peer")                      \
    XX(CRYPTO,      -19, "cryptographic operation failed")                    \
    XX(CERT,        -20, "certificate or key problem")                        \
    XX(NETWORK,     -21, "network unreachable or socket error")               \
    XX(PIN,         -22, "PIN wrong or missing")                              \
    XX(CREDENTIALS, -23, "credentials missing")                               \
    XX(TUN,         -24, "TUN device or route setup failed")                  \
    XX(TOKEN,       -25, "enrolment token refused (expired, used or unknown): ask the operator for a new one") \
    XX(PENDING,     -26, "enrolment not approved yet: the operator must approve this device") \
    XX(SERVER_CERT, -27, "management server certificate does not chain to the bootstrap's server_ca") \
    XX(BUNDLE,      -28, "profile bundle refused (signature, device, version or expiry)") \
    XX(ENROL,       -29, "enrolment refused by the management server") \
    XX(DECOMMISSION, -30, "decommissioning refused by the management server: nothing changed")

typedef enum m2mvpn_error {
    M2MVPN_OK = 0,
#define M2MVPN_XX_ENUM(name, value, msg) M2MVPN_E_##name = (value),
    M2MVPN_ERROR_MAP(M2MVPN_XX_ENUM)
#undef M2MVPN_XX_ENUM
} m2mvpn_error;

/* ----------------------------------------------------------------- handle */

/** The opaque handle. One per VPN client instance; all state hangs off it. */
typedef struct m2mvpn m2mvpn;

/* ----------------------------------------------------------------- events */

/** Tunnel states, as reported in events, status and `status --json`. */
typedef enum m2mvpn_state {
    M2MVPN_STATE_IDLE = 0,
    M2MVPN_STATE_CONNECTING = 1,
    M2MVPN_STATE_CONNECTED = 2,
    M2MVPN_STATE_RECONNECTING = 3,
    M2MVPN_STATE_DISCONNECTING = 4
} m2mvpn_state;

typedef enum m2mvpn_event_type {
    M2MVPN_EVENT_STATE_CHANGED = 1,
    M2MVPN_EVENT_PIN_REQUIRED = 2,
    M2MVPN_EVENT_CREDENTIALS_REQUIRED = 3,
    M2MVPN_EVENT_ROAMED = 4,
    M2MVPN_EVENT_REKEYED = 5,
    M2MVPN_EVENT_AUTH_FAILED = 6,
    M2MVPN_EVENT_CONFIG_UPDATED = 7,
    M2MVPN_EVENT_UPDATE_AVAILABLE = 8,
    M2MVPN_EVENT_CERT_RENEWED = 9,
    M2MVPN_EVENT_ENROLLED = 10,        /**< management: the device certificate arrived (1.2) */
    M2MVPN_EVENT_DECOMMISSIONED = 11   /**< management: the answer to m2mvpn_decommission (1.3) */
} m2mvpn_event_type;

/**
 * One event. Valid only during the callback; copy what you keep.
 * Read `struct_size` before any member that a later version appended.
 */
struct m2mvpn_event {
    size_t struct_size;        /**< sizeof(struct m2mvpn_event) of the library */
    m2mvpn_event_type type;
    int error;                 /**< 0 or a negative M2MVPN_E_* code */
    const char *detail;        /**< human-readable detail; never NULL, may be "" */
    m2mvpn_state state;        /**< STATE_CHANGED: the new state; else current */
    m2mvpn_state old_state;    /**< STATE_CHANGED: the previous state */
    const char *profile;       /**< name of the active profile, or "" */
};
typedef struct m2mvpn_event m2mvpn_event;

/** Callbacks. Set struct_size = sizeof(m2mvpn_callbacks). Members are only appended. */
typedef struct m2mvpn_callbacks {
    size_t struct_size;
    /** Runs on the engine thread. May call any control call (it is queued),
     *  but not m2mvpn_free(), m2mvpn_start(), m2mvpn_process(),
     *  m2mvpn_get_fd() or m2mvpn_get_timeout_ms(). */
    void (*on_event)(m2mvpn *h, const m2mvpn_event *ev, void *userdata);
} m2mvpn_callbacks;

/* ------------------------------------------------------------- lifecycle */

/**
 * Create a handle. `cbs` may be NULL (no events) and is copied; `userdata` is
 * passed to callbacks. On success *ret is set and 0 returned; on failure *ret
 * is left untouched. Errors: INVAL (ret NULL, cbs->struct_size too small),
 * NOMEM, SYSTEM. Thread-safe.
 */
M2MVPN_API int m2mvpn_new(const m2mvpn_callbacks *cbs, void *userdata, m2mvpn **ret);

/**
 * Stop the engine (joining its thread), tear down the tunnel and free the
 * handle; secrets are wiped. NULL is fine. Must not be called from a callback
 * (it would free the engine under its own feet): such a call is refused and
 * logged, and the handle stays valid. Not to be called concurrently with any
 * other call on the same handle.
 */
M2MVPN_API void m2mvpn_free(m2mvpn *h);

/* --------------------------------------------------------------- profiles */

/**
 * Load one profile or {"profiles": [...]} from a JSON file (format: docs/profile.md).
 * Relative paths in it resolve against the file's folder. The file is parsed and
 * validated in the calling thread; on any error nothing is changed and
 * m2mvpn_last_error() names the key path and what was wrong. Profiles with a name
 * already loaded replace the old ones. In {"profiles": [...]} without a
 * top-level "version", every profile needs "version": 1. Once the engine runs
 * the queued re-evaluation, an active always-on profile (the default mode)
 * connects by itself; a replaced active profile is released and started over.
 * Errors: BADHANDLE, INVAL, IO, JSON, PROFILE, NOMEM. Thread-safe.
 */
M2MVPN_API int m2mvpn_profile_load_file(m2mvpn *h, const char *path);

/** As m2mvpn_profile_load_file(), from a buffer of `len` bytes (no NUL needed);
 *  relative paths resolve against the current working directory. */
M2MVPN_API int m2mvpn_profile_load_json(m2mvpn *h, const char *json, size_t len);

/**
 * Make profile `name` the active one. While the tunnel is up and the new
 * profile keeps its TUN, kill switch and mode (no EAP), the new profile's
 * SAs come up before the old ones go, with its gateway (make-before-break,
 * state stays CONNECTED, a STATE_CHANGED event says "make-before-break: ...",
 * or "shortest gap (virtual IP NEW, was OLD): ..." when the gateway assigns
 * another virtual IP);
 * otherwise the old tunnel is released first ("break-before-make: why" in
 * the STATE_CHANGED of that move). The new profile connects if it is
 * always-on or the old one was up or wanted up.
 * Errors: BADHANDLE, INVAL, NOPROFILE, NOMEM. Queued; thread-safe.
 */
M2MVPN_API int m2mvpn_profile_switch(m2mvpn *h, const char *name);

/**
 * Unload profile `name` on purpose: the tunnel of that profile goes down
 * and everything it set up on the device (TUN, addresses, routes, and the
 * kill switch, which otherwise outlives disconnects, restarts and crashes)
 * is removed. The next loaded profile, if any, becomes the active one.
 * Errors: BADHANDLE, INVAL, NOPROFILE, NOMEM. Queued; thread-safe. Added in 1.0.
 */
M2MVPN_API int m2mvpn_profile_unload(m2mvpn *h, const char *name);

/* ------------------------------------------------------------ connecting */

/** Start the tunnel of the active profile (the first loaded one unless switched).
 *  A no-op (returning 0) while an attempt is under way or the tunnel is up;
 *  cuts short the backoff of a reconnecting always-on profile. Tunnel
 *  failures arrive as STATE_CHANGED events with an error, not as a return.
 *  Errors: BADHANDLE, NOPROFILE, NOMEM. Queued; progress arrives as
 *  STATE_CHANGED events. */
M2MVPN_API int m2mvpn_connect(m2mvpn *h);

/** Stop the tunnel (IKE Delete when established); an always-on profile stays
 *  down until m2mvpn_connect() (or until the profile is loaded again or
 *  switched to). With tunnel.kill_switch on, the TUN routes and blackholes
 *  stay, so protected traffic is dropped. Errors: BADHANDLE, NOMEM. Queued. */
M2MVPN_API int m2mvpn_disconnect(m2mvpn *h);

/**
 * Set EAP username/password (answers CREDENTIALS_REQUIRED, or presets them).
 * `user` may be NULL to keep the profile's identity. Both are copied; the
 * password is wiped after use and never logged. Queued; thread-safe. They
 * take the place of the profile's auth.eap.password. A password the gateway
 * refused (AUTH_LOCAL) is never sent again: an always-on profile waits for
 * new credentials and connects when this call gives them.
 * Errors: BADHANDLE, INVAL (password NULL, empty or longer than 256, user
 * empty or longer than 255), NOMEM. (1.0 returned NOTSUPP.)
 */
M2MVPN_API int m2mvpn_set_credentials(m2mvpn *h, const char *user, const char *password);

/**
 * Answer PIN_REQUIRED (smartcard, TPM, protected .p12; in this version the
 * "file" and "machine" sources: encrypted PEM key or protected .p12) with `len` bytes of
 * PIN. The PIN is copied, wiped after use and never logged. Queued: the engine
 * tries it once if it is waiting for a PIN (wrong: IDLE with E_PIN, never
 * retried by the library) and discards it otherwise. Errors: BADHANDLE,
 * INVAL (NULL, empty, longer than 256, contains a NUL byte), NOMEM. Thread-safe.
 */
M2MVPN_API int m2mvpn_enter_pin(m2mvpn *h, const char *pin, size_t len);

/* ---------------------------------------------------------------- status */

/** Status snapshot. Set struct_size = sizeof(m2mvpn_status) before the call. */
typedef struct m2mvpn_status {
    size_t struct_size;
    m2mvpn_state state;
    int last_error;                 /**< 0 or the last M2MVPN_E_* of the tunnel (kept after recovery) */
    char profile[64];               /**< active profile name, or "" */
    char gateway[64];               /**< gateway host:port in use (as in the profile), or "" */
    char virtual_ip[48];            /**< address assigned by the gateway (IPv4 if one was, else IPv6), or "" */
    char last_error_text[256];      /**< detail of last_error, or "" */
    uint64_t bytes_in, bytes_out;
    uint64_t packets_in, packets_out;
    uint64_t packets_dropped;
    int64_t connected_since;        /**< Unix time of the current connection, or 0 */
    char ike_algorithms[96];        /**< e.g. "aes256gcm16-prfsha384-x25519", or "" */
    char esp_algorithms[96];        /**< e.g. "aes256gcm16", or "" */
    char dns[4][48];                /**< DNS servers the gateway assigned; "" = unused */
    uint32_t spi_in, spi_out;       /**< the current CHILD SA (0 = none) */
    uint64_t dropped_replay;        /**< of packets_dropped: replayed or too old */
    uint64_t dropped_integrity;     /**< ... integrity check failed (forged, corrupt) */
    uint64_t dropped_no_sa;         /**< ... no SA (not connected: kill switch at work) */
    /* Appended after the first 1.0 header: */
    char warnings[256];             /**< what weakens the active profile, e.g. a PSK shorter
                                     *   than 20 characters; "; "-separated, or "". Never a secret */
    char credential_source[16];     /**< certificate auth: "file", "pkcs11", "tpm"; else "" */
    char credential[160];           /**< what holds our key, e.g. PKCS#11 token "m2m", key "dev1"; never a PIN */
    char cert_subject[256];         /**< our certificate's subject, or "" (none, or not readable yet) */
    int64_t cert_not_after;         /**< its notAfter (Unix time), or 0 */
    /* Appended after `cert_not_after`: */
    uint64_t reconnects;            /**< times the tunnel came up again after a failure or renewal */
    uint64_t rekeys;                /**< CHILD/IKE SA rekeys and reauthentications */
    uint64_t roams;                 /**< moves to another address or NAT mapping (MOBIKE) */
    int64_t last_change;            /**< Unix time of the last move of the connection, or 0 */
    char last_reason[128];          /**< why it moved then, e.g. "no traffic for 300 s", or "" */
} m2mvpn_status;

/**
 * Fill *ret with a consistent snapshot. On an older/smaller struct_size only the
 * members that fit are written. Errors: INVAL (NULL, struct_size too small).
 * Thread-safe; does not wait for the engine.
 */
M2MVPN_API int m2mvpn_get_status(m2mvpn *h, m2mvpn_status *ret);

/**
 * Status as a JSON object: "state", "profile", "gateway", "virtual_ip" (the
 * last three null when empty), "last_error" {"code", "name" (symbolic, e.g.
 * "AUTH_LOCAL"), "message", "detail"}, "counters" {"bytes_in", "bytes_out",
 * "packets_in", "packets_out", "packets_dropped", "dropped" {"replay",
 * "integrity", "no_sa"}}, "connected_since", "dns" [...], "child_sa"
 * {"spi_in", "spi_out"} or null, "algorithms" {"ike", "esp"}, "credential"
 * {"source", "holder", "subject", "not_after"} or null, "version",
 * "warnings" [strings] ([] when none), "transitions" {"reconnects", "rekeys",
 * "roams", "last_change", "last_reason"}.
 * *ret is a new NUL-terminated string
 * the caller frees with m2mvpn_string_free(). Errors: BADHANDLE, INVAL (ret
 * NULL), NOMEM. Thread-safe.
 */
M2MVPN_API int m2mvpn_status_json(m2mvpn *h, char **ret);

/** Free a string returned by the library. NULL is fine. */
M2MVPN_API void m2mvpn_string_free(char *s);

/* ------------------------------------------------------- driving the engine */

/**
 * Run the engine on a thread of the library's own. Errors: BUSY (already
 * started, or driven with m2mvpn_process()), CALLBACK (called from a
 * callback), SYSTEM.
 */
M2MVPN_API int m2mvpn_start(m2mvpn *h);

/**
 * Stop the engine thread. From any other thread it waits until the thread has
 * ended; from a callback it asks the loop to end and returns at once (the thread
 * is joined by m2mvpn_free() or the next m2mvpn_start()). Errors: STATE (not started).
 */
M2MVPN_API int m2mvpn_stop(m2mvpn *h);

/**
 * For single-threaded firmware with its own poll loop: a file descriptor that
 * becomes readable (POLLIN) when m2mvpn_process() has work. Do not read or
 * close it. Errors: CALLBACK (called from a callback), BUSY (engine thread
 * running). Returns the fd (>= 0).
 */
M2MVPN_API int m2mvpn_get_fd(m2mvpn *h);

/** Milliseconds until m2mvpn_process() must run even if the fd stays quiet;
 *  -1 for no timer. Errors as m2mvpn_get_fd(). */
M2MVPN_API int m2mvpn_get_timeout_ms(m2mvpn *h);

/** Do all pending work without blocking: commands, I/O, due timers, callbacks.
 *  Errors: BUSY (engine thread running), CALLBACK (called from a callback). */
M2MVPN_API int m2mvpn_process(m2mvpn *h);

/* ---------------------------------------------------------------- logging */

enum m2mvpn_log_level {
    M2MVPN_LOG_ERROR = 0,
    M2MVPN_LOG_WARNING = 1,
    M2MVPN_LOG_INFO = 2,
    M2MVPN_LOG_DEBUG = 3
};

/** Receives one finished line (no trailing newline), its level and subsystem
 *  ("api", "core", "ike", "esp", "cred", ...). Runs on the engine thread, or on
 *  the thread of a control call that logs. Secrets never appear in `msg`. */
typedef void (*m2mvpn_log_cb)(m2mvpn *h, int level, const char *subsystem,
                              const char *msg, void *userdata);

/** Install (cb non-NULL) or remove (cb NULL) the log hook; messages above
 *  `level` are not produced. Errors: INVAL (level out of range). Thread-safe. */
M2MVPN_API int m2mvpn_set_log(m2mvpn *h, m2mvpn_log_cb cb, int level, void *userdata);

/* ----------------------------------------------------------------- misc */

/** Human detail of this handle's last failed call (or tunnel failure), e.g.
 *  "gateways[0].port: must be 1..65535". Never NULL. The text is a copy of the
 *  calling thread's own: valid until this thread calls m2mvpn_last_error()
 *  again. Which failure it describes is the handle's latest, whichever thread
 *  (or the engine) caused it. Thread-safe. */
M2MVPN_API const char *m2mvpn_last_error(m2mvpn *h);

/** Static message for an error code; never NULL ("unknown error" for others). */
M2MVPN_API const char *m2mvpn_strerror(int err);

/** Symbolic name of an error code without the prefix ("AUTH_LOCAL" for
 *  M2MVPN_E_AUTH_LOCAL), "" for 0, "UNKNOWN" for others. Never NULL. */
M2MVPN_API const char *m2mvpn_error_name(int err);

/** Name of a state as in `status --json`: "idle", "connecting", "connected",
 *  "reconnecting", "disconnecting"; "unknown" for others. Never NULL. */
M2MVPN_API const char *m2mvpn_state_name(int state);

/** Name of an event type without the prefix ("STATE_CHANGED"); "UNKNOWN"
 *  for others. Never NULL. */
M2MVPN_API const char *m2mvpn_event_name(int type);

/**
 * Bind a PEM private key to this machine (auth.cert.source "machine"): read
 * `key_path`, encrypt it (AES-256-GCM) under a key derived (HKDF-SHA256) from
 * this machine's fingerprint `sources`, write `out_path` (mode 0600, replaced
 * as a whole). sources: comma-separated "machine-id", "dmi-uuid",
 * "mac:IFNAME", "file:/ABSOLUTE/PATH"; NULL means "machine-id,dmi-uuid". On
 * another machine the file does not open ("bound to another machine").
 * `err` (may be NULL) receives a one-line reason without secrets. Needs no
 * handle; thread-safe. Errors: INVAL, IO, CERT (no private key in the file,
 * a source unavailable), CRYPTO, NOMEM. Added in 1.1.
 */
M2MVPN_API int m2mvpn_bind_key(const char *key_path, const char *out_path, const char *sources,
                               char *err, size_t err_len);

/**
 * The folder where management keeps what the device stores (device key for
 * the file provider, certificate, mgmt.json, the installed profile and its
 * CAs); every file is written atomically, mode 0600. Needed before a
 * bootstrap profile (one with "management") is loaded; the folder must exist
 * and be writable. Copied. Errors: BADHANDLE, INVAL (NULL, empty, not a
 * folder), IO (not writable), NOMEM. Thread-safe. Added in 1.2.
 */
M2MVPN_API int m2mvpn_set_state_dir(m2mvpn *h, const char *dir);

/**
 * Report how installing the software update `version` went: the one an
 * UPDATE_AVAILABLE event handed over (detail "<version> <path>"); ok
 * non-zero: installed; details: one line for the operator (or NULL). Sent
 * to the management server as the deployment's feedback. Errors:
 * BADHANDLE, INVAL (version NULL), STATE (no update of that version waits
 * for its result). Thread-safe. Added in 1.2.
 */
M2MVPN_API int m2mvpn_update_result(m2mvpn *h, const char *version, int ok, const char *details);

/**
 * Decommission this device: revoke its own certificate at the management
 * server and remove its credential, e.g. before the device is scrapped,
 * resold or handed back. For an enrolled managed device (a bootstrap
 * profile runs and has its certificate).
 *
 * Non-blocking: the call queues the request and returns; the outcome comes
 * as one event M2MVPN_EVENT_DECOMMISSIONED on the engine thread (once the
 * server answered, or its request timed out, at most about two minutes):
 *  - error 0: the server revoked the certificate (a CMP revocation request,
 *    RFC 4210 5.3.9, signed with the device key in its provider, answered
 *    "accepted" and signed by the device CA); the tunnel is stopped, the
 *    management polling stops, and the device key (file, TPM key file, or
 *    the token's key object), its certificate, mgmt.json, the installed
 *    profile and its CA files are removed from the state directory (keys
 *    overwritten before unlinking). decommission.json stays: the bootstrap
 *    then refuses to run in that state directory (error STATE) until it
 *    is removed and a new enrolment token given. Detail: device id and
 *    revoked serial.
 *  - error < 0: nothing changed (tunnel, polling, files); the detail says
 *    why: DECOMMISSION (refused by the server, its reason), NETWORK
 *    (server unreachable), SERVER_CERT (TLS), PROTOCOL (an answer that
 *    cannot be trusted: unsigned, another signer, another transaction).
 *    Call again to retry.
 * A stop or power cut during it is finished at the next start: before the
 * request is sent, decommission.json says so; at the next start the device
 * sends the request again without using its certificate for the tunnel,
 * and a removal that was under way is completed.
 *
 * Errors of the call itself: BADHANDLE, STATE (not an enrolled managed
 * device, or not yet enrolled). Thread-safe; may be called from a
 * callback. Added in 1.3.
 */
M2MVPN_API int m2mvpn_decommission(m2mvpn *h);

/** Library version string, e.g. "1.0.0". */
M2MVPN_API const char *m2mvpn_version(void);

#ifdef __cplusplus
}
#endif

#endif /* M2MVPN_M2MVPN_H */
