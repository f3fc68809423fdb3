/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Internal to lib/esp: the kill switch's second layer, an nftables table of
 * our own (`table inet m2mvpn_<tun>`), through libnftables. Its one chain, on
 * the postrouting hook (every packet that leaves, locally generated or
 * forwarded, after any rerouting, with the interface it really leaves by),
 * drops packets for the protected prefixes unless they leave by the TUN or
 * lo; our own IKE/ESP sockets (UDP carrying the fwmark) pass, so that a
 * gateway inside a protected prefix (full tunnel) is still reached. It holds
 * even when the routing is bypassed: a socket bound to another interface
 * (SO_BINDTODEVICE), a rule of higher priority than ours.
 *
 * Without libnftables at build time (meson -Dnftables=disabled), or when the
 * kernel has no nf_tables, apply reports the layer as absent and succeeds:
 * policy routing alone holds the kill switch. Engine thread only.
 */
#ifndef M2MVPN_ESP_NFT_H
#define M2MVPN_ESP_NFT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "esp.h"

/* Replace the table atomically (one nftables transaction: no moment without
 * it) with one for these prefixes; n == 0 removes it. *active: the table is in
 * place; false with the reason in `why` (not built / not in this kernel).
 * Errors: INVAL (a TUN name nftables cannot take), TUN with nftables' message
 * in err. */
int esp_nft_apply(const char *tun, uint32_t fwmark, const esp_prefix *prefixes, size_t n,
                  bool *active, char *why, size_t why_len, char *err, size_t err_len);

/* Remove the table if there is one (a leftover of a killed engine too). */
void esp_nft_remove(const char *tun);

/* "inet m2mvpn_<tun>" (for messages). */
void esp_nft_table_name(const char *tun, char *out, size_t out_len);

#endif
