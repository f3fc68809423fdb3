/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Prints the C layout of the public structs as JSON, so the Python binding's
 * ctypes Structures can be checked against what the compiler does with
 * include/m2mvpn/m2mvpn.h (tests/test_abi.py).
 */
#include <m2mvpn/m2mvpn.h>
#include <stddef.h>
#include <stdio.h>

#define FIELD(type, f) printf("%s\"%s\": [%zu, %zu]", first++ ? ", " : "", #f, offsetof(type, f), sizeof(((type *)0)->f))

int main(void)
{
    int first = 0;
    printf("{\"m2mvpn_event\": {\"size\": %zu, \"fields\": {", sizeof(m2mvpn_event));
    FIELD(m2mvpn_event, struct_size); FIELD(m2mvpn_event, type); FIELD(m2mvpn_event, error);
    FIELD(m2mvpn_event, detail); FIELD(m2mvpn_event, state); FIELD(m2mvpn_event, old_state);
    FIELD(m2mvpn_event, profile);
    first = 0;
    printf("}}, \"m2mvpn_callbacks\": {\"size\": %zu, \"fields\": {", sizeof(m2mvpn_callbacks));
    FIELD(m2mvpn_callbacks, struct_size); FIELD(m2mvpn_callbacks, on_event);
    first = 0;
    printf("}}, \"m2mvpn_status\": {\"size\": %zu, \"fields\": {", sizeof(m2mvpn_status));
    FIELD(m2mvpn_status, struct_size); FIELD(m2mvpn_status, state); FIELD(m2mvpn_status, last_error);
    FIELD(m2mvpn_status, profile); FIELD(m2mvpn_status, gateway); FIELD(m2mvpn_status, virtual_ip);
    FIELD(m2mvpn_status, last_error_text); FIELD(m2mvpn_status, bytes_in); FIELD(m2mvpn_status, bytes_out);
    FIELD(m2mvpn_status, packets_in); FIELD(m2mvpn_status, packets_out); FIELD(m2mvpn_status, packets_dropped);
    FIELD(m2mvpn_status, connected_since); FIELD(m2mvpn_status, ike_algorithms);
    FIELD(m2mvpn_status, esp_algorithms); FIELD(m2mvpn_status, dns); FIELD(m2mvpn_status, spi_in);
    FIELD(m2mvpn_status, spi_out); FIELD(m2mvpn_status, dropped_replay); FIELD(m2mvpn_status, dropped_integrity);
    FIELD(m2mvpn_status, dropped_no_sa); FIELD(m2mvpn_status, warnings);
    FIELD(m2mvpn_status, dropped_no_sa); FIELD(m2mvpn_status, credential_source);
    FIELD(m2mvpn_status, credential); FIELD(m2mvpn_status, cert_subject); FIELD(m2mvpn_status, cert_not_after);
    printf("}}}\n");
    return 0;
}
