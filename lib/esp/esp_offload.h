/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Internal to lib/esp: TUN offloads (IFF_VNET_HDR). With TSO enabled the
 * kernel hands the datapath TCP super-packets of up to 64 KiB that it must
 * cut into MSS-sized segments itself (and finish partial checksums); on the
 * way in, consecutive segments of one TCP flow are coalesced into one
 * super-packet, so the kernel runs its receive path once per batch.
 * All functions are pure (no I/O) so they are unit-testable.
 */
#ifndef M2MVPN_ESP_OFFLOAD_H
#define M2MVPN_ESP_OFFLOAD_H

#include <linux/virtio_net.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ESP_VNET_HDR_LEN sizeof(struct virtio_net_hdr)
#define ESP_GSO_MAX 65536

/* Internet checksum (RFC 1071) helpers. */
uint32_t esp_csum_add(uint32_t sum, const uint8_t *p, size_t len);
uint16_t esp_csum_fold(uint32_t sum);

/* Finish a VIRTIO_NET_HDR_F_NEEDS_CSUM packet in place. false if the offsets
 * lie outside the packet. */
bool esp_csum_complete(uint8_t *pkt, size_t len, uint16_t csum_start, uint16_t csum_offset);

/*
 * Cut a TSO packet (IPv4 or IPv6 without extension headers, TCP) into
 * segments of at most `mss` payload bytes. Segment i is written to
 * out[i] (capacity out_cap each) with correct lengths, IPv4 id and header
 * checksum, TCP sequence number, flags (FIN/PSH only on the last, CWR only on
 * the first) and full TCP checksum. Returns the number of segments (<= max_out)
 * or 0 if the packet is not a TCP packet we can segment or would need more
 * than max_out segments or bigger buffers.
 */
size_t esp_tso_segment(const uint8_t *pkt, size_t len, uint16_t mss, uint8_t *const *out,
                       size_t out_cap, size_t *out_len, size_t max_out);
/* The same, in parts, for batches smaller than a super-packet: segments
 * first .. first + k - 1 (k <= max_out, as many as there are) go to out[0..k-1];
 * *total is the packet's number of segments. Returns k, or 0 if the packet
 * cannot be segmented or first >= *total. */
size_t esp_tso_segment_part(const uint8_t *pkt, size_t len, uint16_t mss, size_t first,
                            uint8_t *const *out, size_t out_cap, size_t *out_len, size_t max_out,
                            size_t *total);

/* Coalescing of received TCP segments into one super-packet. */
typedef struct esp_gro {
    uint8_t *buf;              /* ESP_VNET_HDR_LEN + ESP_GSO_MAX bytes */
    size_t len;                /* packet bytes after the vnet header; 0 = empty */
    size_t hdr_len;            /* IP + TCP header length */
    size_t mss;                /* payload size of the first segment */
    size_t count;
    uint32_t next_seq;
    bool ipv6;
    bool closed;               /* last segment was short or had PSH/FIN */
    bool csum_ok;              /* every segment's TCP checksum (and IPv4 header
                                * checksum) was verified here */
} esp_gro;

/* Checksums: ESP authenticates the gateway, not the inner packet's path to
 * it, so a segment's own checksums still count. The super-packet reaches the
 * kernel as verified (a partial checksum it only completes), so each segment
 * is verified before it is merged; one that fails is never merged and goes
 * up alone without DATA_VALID, for the kernel to check and drop. */

/* Try to append a segment; false if it does not continue the current flow
 * or its checksums are wrong (then flush and start anew with esp_gro_start). */
bool esp_gro_append(esp_gro *g, const uint8_t *pkt, size_t len);
/* Start with this packet (any IP packet; non-TCP ones are never extended). */
void esp_gro_start(esp_gro *g, const uint8_t *pkt, size_t len);
/* Finish: fill the vnet header in front of the packet and return the number
 * of bytes to write (header included); resets the coalescer. A single packet
 * is marked DATA_VALID only if it is TCP and its checksums were verified. */
size_t esp_gro_finish(esp_gro *g);

#endif
