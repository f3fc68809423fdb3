/* SPDX-License-Identifier: Apache-2.0 */
#include "proposal.h"
bool proposal_encr_is_aead(uint16_t id) { return id == ENCR_AES_GCM_16 || id == ENCR_CHACHA20_POLY1305; }
