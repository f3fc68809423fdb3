/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Internal to lib/esp: the kill switch's second layer, an nftables table of
 * our own (`table inet m2mvpn_<tun>`), through libnftables. Its one chain, on
 * the postrouting hook (every packet that leaves, locally generated or
 * forwarded, after any rerouting, with the interface it really leaves by),
 * drops packets for the protected prefixes unless they leave by the TUN or
 * lo; our own IKE/ESP packets pass (UDP carrying the fwmark, to port 500,
 * 4500 or a gateway's configured IKE port: nothing else that carries the
 * mark), so that a gateway inside a protected prefix (full tunnel) is still
 * reached. The mark is predictable and SO_MARK needs only CAP_NET_RAW (Linux
 * 5.17): such a process can still send UDP to those ports of a protected
 * address in plaintext, nothing else. It holds
 * even when the routing is bypassed: a socket bound to another interface
 * (SO_BINDTODEVICE), a rule of higher priority than ours.
 *
 * Without libnftables at build time (meson -Dnftables=disabled), on the
 * device, or when the kernel has no nf_tables, apply reports the layer as
 * absent (*active false, the reason in `why`) and succeeds; lib/conn then
 * refuses the kill switch unless the profile accepts policy routing alone
 * (tunnel.kill_switch_routing_only). Engine thread only.
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
 * ike_ports: the gateways' IKE ports besides 500 and 4500 (0s are skipped).
 * vips: the TUN's virtual IPs: nothing with one of them as its source leaves
 * by another interface, and no ARP request names the IPv4 one (a table
 * `arp m2mvpn_<tun>`, replaced and removed with the inet one).
 * Errors: INVAL (a TUN name nftables cannot take), TUN with nftables' message
 * in err. */
int esp_nft_apply(const char *tun, uint32_t fwmark, const esp_prefix *prefixes, size_t n,
                  const uint16_t *ike_ports, size_t n_ike_ports, const esp_prefix *vips, size_t n_vips,
                  bool *active, char *why, size_t why_len, char *err, size_t err_len);

/* Remove the table if there is one (a leftover of a killed engine too). */
void esp_nft_remove(const char *tun);

/* "inet m2mvpn_<tun>" (for messages). */
void esp_nft_table_name(const char *tun, char *out, size_t out_len);

#endif
