/* SPDX-License-Identifier: Apache-2.0 */
/*
 * `m2mvpn keygen`: a new key where its provider keeps it, and a CSR signed
 * by it, for enrolment (docs/cli.md). Unlike the other commands this one
 * does not talk to the service: it calls lib/cred's key generation
 * (keygen.h) directly, the same code the management client uses.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <m2mvpn/m2mvpn.h>

#include "cli.h"
#include "cred/keygen.h"
#include "secret_input.h"

#define KEYGEN_MAX_PIN 256

static int usage_error(const char *what)
{
    cli_error("keygen: %s (see 'm2mvpn --help')", what);
    return CLI_EXIT_USAGE;
}

int cli_cmd_keygen(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "provider", required_argument, NULL, 'P' },
        { "rsa", no_argument, NULL, 'r' },
        { "out", required_argument, NULL, 'o' },
        { "csr", required_argument, NULL, 'c' },
        { "subject", required_argument, NULL, 's' },
        { "tcti", required_argument, NULL, 't' },
        { "handle", required_argument, NULL, 'H' },
        { "module", required_argument, NULL, 'm' },
        { "uri", required_argument, NULL, 'u' },
        { "pin-stdin", no_argument, NULL, 'p' },
        { NULL, 0, NULL, 0 },
    };
    keygen_request rq;
    memset(&rq, 0, sizeof rq);
    const char *provider = NULL, *csr = NULL, *handle = NULL;
    bool pin_stdin = false;
    optind = 1;
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'P': provider = optarg; break;
        case 'r': rq.rsa = true; break;
        case 'o': rq.out = optarg; break;
        case 'c': csr = optarg; break;
        case 's': rq.subject = optarg; break;
        case 't': rq.tpm_tcti = optarg; break;
        case 'H': handle = optarg; break;
        case 'm': rq.pkcs11_module = optarg; break;
        case 'u': rq.pkcs11_uri = optarg; break;
        case 'p': pin_stdin = true; break;
        default: {
            char msg[160];
            snprintf(msg, sizeof msg, "unknown or incomplete option '%s'", argv[optind - 1]);
            return usage_error(msg);
        }
        }
    }
    if (optind < argc)
        return usage_error("unexpected argument");
    if (!provider || !csr || !rq.subject)
        return usage_error("--provider, --csr and --subject are required");
    if (!strcmp(provider, "file"))
        rq.provider = KEYGEN_FILE;
    else if (!strcmp(provider, "pkcs11"))
        rq.provider = KEYGEN_PKCS11;
    else if (!strcmp(provider, "tpm"))
        rq.provider = KEYGEN_TPM;
    else
        return usage_error("--provider must be file, pkcs11 or tpm");
    bool file = rq.provider == KEYGEN_FILE, p11 = rq.provider == KEYGEN_PKCS11, tpm = rq.provider == KEYGEN_TPM;
    if ((rq.pkcs11_module || rq.pkcs11_uri) && !p11)
        return usage_error("--module and --uri are for --provider pkcs11");
    if ((rq.tpm_tcti || handle) && !tpm)
        return usage_error("--tcti and --handle are for --provider tpm");
    if (p11 && (!rq.pkcs11_module || !rq.pkcs11_uri || !pin_stdin))
        return usage_error("--provider pkcs11 needs --module, --uri and --pin-stdin");
    if (p11 && rq.out)
        return usage_error("--out is not used with --provider pkcs11 (the key stays on the token)");
    if (file && !rq.out)
        return usage_error("--provider file needs --out KEY.pem");
    if (tpm && !rq.out == !handle)
        return usage_error("--provider tpm needs either --out KEY.tss2.pem or --handle 0x81xxxxxx");
    if (handle) {
        char *end = NULL;
        unsigned long v = strtoul(handle, &end, 16);
        if (strncmp(handle, "0x", 2) != 0 || !end || *end || (v >> 24) != 0x81)
            return usage_error("--handle must be a persistent handle 0x81000000..0x81ffffff");
        rq.tpm_handle = (uint32_t)v;
    }
    if (access(csr, F_OK) == 0) {
        cli_error("keygen: %s exists: not replaced", csr);
        return CLI_EXIT_FAILED;
    }
    char pin[KEYGEN_MAX_PIN + 1], err[512];
    if (pin_stdin) {
        int n = secret_read("PIN", pin, sizeof pin, err, sizeof err);
        if (n < 0) {
            cli_error("keygen: %s", err);
            return CLI_EXIT_FAILED;
        }
        rq.pin = pin;
        rq.pin_len = (size_t)n;
    }
    char *csr_pem = NULL;
    err[0] = '\0';
    int r = keygen_run(&rq, &csr_pem, err, sizeof err);
    explicit_bzero(pin, sizeof pin);
    if (r == 0)
        r = keygen_write_new_file(csr, csr_pem, strlen(csr_pem), 0644, err, sizeof err);
    free(csr_pem);
    if (r < 0) {
        cli_error("keygen: %s (%s)", err[0] ? err : m2mvpn_strerror(r), m2mvpn_error_name(r));
        return CLI_EXIT_FAILED;
    }
    printf("key: %s%s%s, %s; CSR: %s\n", file ? rq.out : tpm ? "TPM " : "token ",
           tpm ? (rq.out ? rq.out : handle) : "", p11 ? rq.pkcs11_uri : "",
           rq.rsa ? "RSA 2048" : "ECC P-256", csr);
    return CLI_EXIT_OK;
}
