/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Checks and conversions of single profile values (internal to lib/profile):
 * file paths, traffic-selector prefixes, host names, names. They know
 * nothing of JSON; the schema (profile_schema.c) adds the key path.
 */
#ifndef M2MVPN_PROFILE_VALUES_H
#define M2MVPN_PROFILE_VALUES_H

#include <stdbool.h>
#include <stddef.h>

#include "profile.h"

/* Where relative paths of one profile text resolve. The absolute form is
 * made on first use, so texts with only absolute paths never need getcwd(). */
typedef struct path_base {
    const char *given;  /* base_dir as passed; NULL: the current directory */
    char *abs;          /* absolute form, owned; NULL until first needed */
} path_base;

void path_base_release(path_base *b);

/*
 * *out = `path` if absolute, else base + "/" + path (leading "./" dropped),
 * newly allocated. Returns 0, M2MVPN_E_NOMEM, M2MVPN_E_PROFILE with `why`
 * ("path too long", at most PATH_MAX-1 bytes) or M2MVPN_E_IO with `why`
 * ("cannot find the current directory: <strerror>").
 */
int path_resolve(path_base *b, const char *path, char **out, char *why, size_t why_len);

/* True for a name of 1..max characters of A-Z a-z 0-9 . _ - (profile names,
 * TUN device names). */
bool value_is_plain_name(const char *s, size_t max);

/* True for an IPv4/IPv6 literal or a DNS name (labels of letters, digits, '-'
 * and '_', dot-separated, at most 253 characters, one trailing dot allowed). */
bool value_is_host(const char *s);

/* True for a TPM 2.0 persistent handle "0x81000000".."0x81ffffff". */
bool value_is_tpm_handle(const char *s);
/* True if s starts like a handle ("0x" or "0X"), valid or not. */
bool value_looks_like_handle(const char *s);

/* True if the file name ends in .p12 or .pfx (any case). */
bool value_is_pkcs12_name(const char *s);

typedef enum prefix_fault {
    PREFIX_OK,
    PREFIX_MALFORMED,   /* not "address[/len]" */
    PREFIX_HOST_BITS,   /* bits set beyond the prefix length */
} prefix_fault;

/*
 * Parse "198.18.0.0/15" / "2001:db8::/32" (a bare address is a host prefix:
 * /32 or /128). On PREFIX_HOST_BITS, `suggest` gets the prefix with the host
 * bits cleared ("198.18.0.0/15"). *out is written only on PREFIX_OK.
 */
prefix_fault value_parse_prefix(const char *s, profile_ts *out, char *suggest, size_t suggest_len);

#endif
