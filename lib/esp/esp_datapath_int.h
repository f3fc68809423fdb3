/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Internal to lib/esp: the datapath object shared by esp_datapath.c (engine
 * side: lifecycle, SA table, handoff, network) and esp_io.c (worker side:
 * batched TUN/UDP I/O). Locking rules: see esp_datapath.c.
 */
#ifndef M2MVPN_ESP_DATAPATH_INT_H
#define M2MVPN_ESP_DATAPATH_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "esp.h"
#include "esp_net.h"
#include "esp_offload.h"

#define ESP_MAX_SAS 4
#define ESP_BATCH 32            /* UDP datagrams per recvmmsg */
#define ESP_TX_BATCH ESP_BATCH_MAX /* slots allocated; cfg.batch of them are used */
/* Room in front of an inner packet for SPI, sequence number and IV. */
#define ESP_HEADROOM 32
#define ESP_TX_SLOT 2048        /* inner up to ESP_TX_SLOT - headroom - trailer */
_Static_assert(ESP_MAX_TUN_MTU <= ESP_TX_SLOT - ESP_HEADROOM - 64, "TUN MTU must fit a slot");
#define ESP_QUEUE_MAX 64        /* IKE packets waiting for the engine */
#define NON_ESP_MARKER_LEN 4
#define ESP_HOLD_MAX 4          /* on-demand: packets held until the first SA */

typedef struct esp_slot {
    esp_sa *sa;
    struct sockaddr_storage peer;
    socklen_t peer_len;
    uint64_t installed;         /* install order: the newest sends */
    bool inbound_only;          /* installed inbound only, not yet sending */
} esp_slot;

typedef struct esp_ike_item {
    struct esp_ike_item *next;
    struct sockaddr_storage from;
    socklen_t from_len;
    size_t len;
    uint8_t data[];
} esp_ike_item;

typedef struct esp_tx_batch {
    uint8_t buf[ESP_TX_BATCH][ESP_TX_SLOT];
    size_t inner_len[ESP_TX_BATCH];
    struct iovec iov[ESP_TX_BATCH];
    struct mmsghdr msg[ESP_TX_BATCH];
    union {                                      /* UDP_SEGMENT per message */
        char buf[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } ctrl[ESP_TX_BATCH];
    uint8_t gso[ESP_VNET_HDR_LEN + ESP_GSO_MAX];  /* offload: one TUN read */
} esp_tx_batch;

/* 512 KiB either way: 32 datagrams of up to 16 KiB, or with UDP GRO 8
 * coalesced buffers of up to 64 KiB. */
#define ESP_RX_BYTES (ESP_BATCH * ESP_MAX_PACKET)
#define ESP_RX_GRO_SLOT 65536

typedef struct esp_rx_batch {
    uint8_t buf[ESP_RX_BYTES];
    struct iovec iov[ESP_BATCH];
    struct mmsghdr msg[ESP_BATCH];
    struct sockaddr_storage from[ESP_BATCH];
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } ctrl[ESP_BATCH];
    uint8_t gro_buf[ESP_VNET_HDR_LEN + ESP_GSO_MAX]; /* offload: coalesced write */
} esp_rx_batch;

/* A worker idle this long gives its batch's pages back (MADV_DONTNEED: they
 * read as zeros, the next packet faults fresh ones in): an idle tunnel keeps
 * none of the buffers a burst touched. Nothing in a batch outlives one
 * poll step, so nothing is lost. */
#define ESP_IDLE_TRIM_MS 1000

struct esp_datapath {
    esp_datapath_config cfg;
    int udp_fd;
    int udp_family;             /* AF_INET6: dual-stack, IPv4 peers mapped */
    int event_fd;               /* workers -> engine */
    int stop_fd;                /* engine -> workers */
    esp_net net;
    /* The cipher of the last esp_datapath_set_network (mtu_set): the TUN
     * MTU follows the outer header's family when the peer moves. */
    uint16_t mtu_encr, mtu_integ;
    bool mtu_set;
    bool net_open;

    pthread_rwlock_t sa_lock;
    esp_slot slots[ESP_MAX_SAS];
    int out_idx;                /* -1: no outbound SA (kill switch drops) */
    uint64_t install_seq;
    esp_sa_counters retired;    /* counters of removed SAs (under sa_lock) */

    pthread_mutex_t q_lock;
    esp_ike_item *q_head, *q_tail;
    size_t q_len;

    _Atomic uint64_t drop_no_sa, drop_malformed, drop_too_big, drop_selector, ike_in, keepalives_out;
    _Atomic uint64_t tx_packets;   /* for keepalive suppression */
    bool offload;                  /* !cfg.no_offload */
    int tx_slots;                  /* batch depth in use (cfg.batch), <= ESP_TX_BATCH */
    bool udp_gso, udp_gro;         /* kernel accepted UDP_SEGMENT / UDP_GRO */

    core_loop *loop;
    core_io event_io, tun_io, udp_io;
    bool event_io_added, tun_io_added, udp_io_added;
    core_timer tick;
    esp_datapath_callbacks cbs;
    void *cb_arg;
    uint32_t keepalive_s;
    uint64_t last_keepalive_ms, last_keepalive_tx;

    esp_prefix dns[ESP_MAX_DNS];
    size_t n_dns;
    esp_prefix remote_ts[ESP_MAX_TS];   /* under sa_lock: outbound filter */
    size_t n_remote_ts;
    esp_prefix in_src[ESP_MAX_TS];      /* under sa_lock: inbound filter */
    size_t n_in_src;                    /* (RFC 4301 §5.2), see esp_tunnel_net */
    esp_prefix in_dst[ESP_MAX_TS];
    size_t n_in_dst;

    /* On-demand (esp_datapath_hold): the first packets for a protected
     * network without SA, at ESP_HEADROOM in their slot. Written by the TX
     * side under the read lock (one TX side at a time), taken by the engine
     * under the write lock. A slot (ESP_TX_SLOT bytes) is allocated when a
     * packet is held and freed when the queue is sent or cleared: an idle
     * or non-on-demand tunnel keeps none. */
    bool hold;
    bool hold_reported;                 /* traffic_wanted raised since hold on */
    uint8_t *held[ESP_HOLD_MAX];
    size_t held_len[ESP_HOLD_MAX];
    size_t n_held;
    _Atomic bool traffic_wanted;        /* -> cbs.on_traffic on the engine */

    /* esp_datapath_expect_spi: ESP packets for the CHILD SA being
     * negotiated. Added by the receiving side under the read lock (one
     * receiving side at a time), taken by the engine under the write lock. */
    uint32_t expect_spi;
    uint8_t *parked[ESP_PARK_MAX];
    size_t parked_len[ESP_PARK_MAX];
    size_t n_parked;

    bool running;
    pthread_t tx_thread, rx_thread;
    esp_tx_batch *tx;           /* own mappings (page-aligned, not on the */
    esp_rx_batch *rx;           /* heap): given back when idle */
    esp_gro gro;                /* receiving side: over rx->gro_buf */
};

/* Wake the engine (eventfd); the engine drains the queue and rekey flags. */
void esp_dp_signal_engine(esp_datapath *dp);
/* Send the held packets through the outbound SA (engine thread; takes the
 * write lock); IPv4 sources are set to vip when given. */
void esp_dp_send_held(esp_datapath *dp, const esp_prefix *vip);
/* Drop the held packets and free their slots (write lock, or no TX side). */
void esp_dp_clear_held_locked(esp_datapath *dp);
/* SA with this inbound SPI, or NULL; caller holds sa_lock. */
esp_slot *esp_dp_find_slot_locked(esp_datapath *dp, uint32_t spi_in);
/* Authenticate and decrypt one ESP packet of this slot's SA, deliver it to
 * the TUN (direct: one write, no coalescing; for callers other than the
 * receiving side); caller holds sa_lock. *rekey |= the SA wants a rekey. */
void esp_dp_rx_esp_locked(esp_datapath *dp, esp_slot *slot, uint8_t *p, size_t len, bool direct,
                          bool *rekey);

#endif
