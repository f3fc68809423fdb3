/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Known-answer data for tests/unit/test_crypto.c, each block with its source.
 * Included by that one file only (static data).
 */
#ifndef M2MVPN_TEST_CRYPTO_VECTORS_H
#define M2MVPN_TEST_CRYPTO_VECTORS_H

#include <stddef.h>
#include <stdint.h>

#include "crypto/crypto.h"

/* RFC 4231 §4.2-4.8 (test case 5 truncates the output: not a PRF case). */
static const struct {
    const char *key_hex;   /* NULL: use key_fill/key_len */
    uint8_t key_fill;
    size_t key_len;
    const char *data;      /* text, or NULL: data_fill/data_len */
    uint8_t data_fill;
    size_t data_len;
    const char *sha256, *sha384, *sha512;
} rfc4231[] = {
    { NULL, 0x0b, 20, "Hi There", 0, 0, /* 4.2 Test Case 1 */
      "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
      "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59c"
      "faea9ea9076ede7f4af152e8b2fa9cb6",
      "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde"
      "daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854" },
    { "4a656665", 0, 0, "what do ya want for nothing?", 0, 0, /* 4.3 Test Case 2 */
      "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
      "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e"
      "8e2240ca5e69e2c78b3239ecfab21649",
      "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554"
      "9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737" },
    { NULL, 0xaa, 20, NULL, 0xdd, 50, /* 4.4 Test Case 3 */
      "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
      "88062608d3e6ad8a0aa2ace014c8a86f0aa635d947ac9febe83ef4e55966144b"
      "2a5ab39dc13814b94e3ab6e101a34f27",
      "fa73b0089d56a284efb0f0756c890be9b1b5dbdd8ee81a3655f83e33b2279d39"
      "bf3e848279a722c806b485a47e67c807b946a337bee8942674278859e13292fb" },
    { "0102030405060708090a0b0c0d0e0f10111213141516171819", 0, 0, NULL, 0xcd, 50,
      /* 4.5 Test Case 4 */
      "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
      "3e8a69b7783c25851933ab6290af6ca77a9981480850009cc5577c6e1f573b4e"
      "6801dd23c4a7d679ccf8a386c674cffb",
      "b0ba465637458c6990e5a8c5f61d4af7e576d97ff94b872de76f8050361ee3db"
      "a91ca5c11aa25eb4d679275cc5788063a5f19741120c4f2de2adebeb10a298dd" },
    { NULL, 0xaa, 131, "Test Using Larger Than Block-Size Key - Hash Key First", 0, 0,
      /* 4.7 Test Case 6 */
      "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
      "4ece084485813e9088d2c63a041bc5b44f9ef1012a2b588f3cd11f05033ac4c6"
      "0c2ef6ab4030fe8296248df163f44952",
      "80b24263c7c1a3ebb71493c1dd7be8b49b46d1f41b4aeec1121b013783f8f352"
      "6b56d037e05f2598bd0fd2215d6a1e5295e64f73f63f0aec8b915a985d786598" },
    { NULL, 0xaa, 131,
      "This is a test using a larger than block-size key and a larger than block-size "
      "data. The key needs to be hashed before being used by the HMAC algorithm.", 0, 0,
      /* 4.8 Test Case 7 */
      "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
      "6617178e941f020d351e2f254e8fd32c602420feb0b8fb9adccebb82461e99c5"
      "a678cc31e799176d3860e6110c46523e",
      "e37b6a775dc87dbaa4dfa9f96e5e3ffddebd71f8867289865df5a32d20cdc944"
      "b6022cac3c4982b10d5eeb55c3e4de15134676fb6de0446065c97440fa8c6a58" },
};

/*
 * NIST CAVP SP 800-135 IKEv2 KDF vectors (the ones with 8-byte nonces) for
 * HMAC-SHA-256/384/512, as carried in strongSwan's test vectors
 * (src/libstrongswan/plugins/test_vectors/test_vectors/kdf_prf.c and
 * kdf_prf_plus.c). DKM = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr), 132 bytes.
 */
static const struct {
    uint16_t prf;
    const char *g_ir, *ni, *nr, *spi_i, *spi_r, *skeyseed, *dkm;
} cavp_ikev2[] = {
    { PRF_HMAC_SHA2_256,
      "42968e5d0ccc3cfc5a3e4bc1bba370cea1fae0d54c49ccba34b2bee804beeb2e9e8c57a4e01bd45102cf2433aacc6cfe"
      "c06792f363e5170e6aa6650274e906648e449d27a8f00b5b44261982c9835c748a751ec5138eaacc5e025661339538a6"
      "1bf418e454699e19c32db8d9ce5dd86b220f1e89afc5872e68be36cb1a0c8866",
      "ed80dc79912c32a9", "35fb6d1a3feac078", "47c1858efc932ea4", "606fd05609624002",
      "37fde90b81d63692620f67367b62092e3efdc6a03509137d731004767ff35010",
      "63d018a08f7a29daa7d1f92cb63f45fa39bbaf5e5f1a78139613bb891e3e6bf9d0448f7c74e05b4c1a25c0b61e62c875"
      "e852f287e192d4ae536112db5197216400bd5e123470efc15f53161865fe8b19a1416518a157d651ecd2caddab6a9eae"
      "6a27a55af088218d5156edaa9789f934d9836ed43edffda553822202ff9f7d4860ca72e0" },
    { PRF_HMAC_SHA2_384,
      "4df040b70978629c49437cff41a0d46cbea68c8d75b370ffc11d7b387144ea83bb5903fbb92e473df50a9b19ea43e9c2"
      "f3da9a849c03864276c6f264ecf02a60d40ba65c06656b633f02a87427e928eb66a2dabd9dc05744717bcaf7ae78c296"
      "872f5c48d1a8120c2155b70c565ce271998e3e44af263d487ea3ba7f56132d7d",
      "d672b0bc852829b9", "3509f3b724706364", "0f9a016d7b22223c", "85f710daf8b982d8",
      "54436a9ea95d6ff79b967f4b07f6de976a376e8ea26aa9574709afc60243c9c141da4ca0e158e627a75ea87f6feb07ef",
      "10b00a654643b3b985764f86e23ef62431122fcc96de16e338a372bee49391db1f83a7358c080380abbf4af47cdb83b9"
      "530343168f7dbc9221260e1546c6b383e2235d2705a727f0b41aebf6a1b4c61cb460660152a17ba74c20d5191ba68417"
      "94945270d829587b7f3294639ea7b77149e1d07230ac16e0cd5ab236fa3212bd569ee70f" },
    { PRF_HMAC_SHA2_512,
      "1e3b007d2da913ca60ecc98c25a22db08073d5c35c11b2524b298a922b6abfe6acf7359db66ae5f85d67aacff686419c"
      "d8666d05ae7977cefad7f54dd8e312a8e8e5e0370f88142fbdd659dd6fde22bdd531f5402881a8de85c1024e595ec93c"
      "575618af7fd3dbac7982919078d71cc13eff1910a032750e1ff428675de189ee",
      "df7931db9b429e10", "b8aa8e4d46042393", "9ba40af9157f4792", "5383c7cd3d1046e6",
      "daf9bd6f2f912da553867966af386e67909a8df0ca7e84b83b355cb7d7f1026f17d8ea34b5d57fd0d1ba389528fca1e8"
      "1d1c8ce511b28a2458241143fee30ccc",
      "919a75deaeccbd393bebc89615f8a215edb7073b2319d86740221eee7a2deb92509044d7e61fcb1bf9676b3881c7ced4"
      "9e6bba1549da3113601677a2445d91ac13a597335782dd3a9cf496d9e19b932f27dd35e36f8070d232d0a3b3f4c4a0b4"
      "ba4470778dc090f31f52ab1b6d81e4c7dfb35063ad96c327adcdbde714cc9a6b5ef049b8" },
};

/* Inputs and expected values: tests/unit/data/crypto/gen_ikev2_vectors.py
 * (an independent implementation of RFC 7296 §2.17/§2.18 on Python's hmac). */
static const char *gen_sk_d = "63d018a08f7a29daa7d1f92cb63f45fa39bbaf5e5f1a78139613bb891e3e6bf9";
static const char *gen_ni = "ed80dc79912c32a9";
static const char *gen_nr = "35fb6d1a3feac078";

/* One AEAD known answer: key includes the 4-byte salt; ct_tag = ciphertext | tag. */
typedef struct aead_kat {
    const char *name;
    uint16_t encr;
    uint16_t bits;
    const char *key_salt, *iv, *aad, *plain, *ct_tag;
} aead_kat;

static const aead_kat aead_kats[] = {
    /* McGrew & Viega, "The Galois/Counter Mode of Operation (GCM)", test case 4
     * (AES-128, IV cafebabefacedbaddecaf888 = salt | explicit IV as RFC 4106/5282). */
    { "gcm128-tc4", ENCR_AES_GCM_16, 128,
      "feffe9928665731c6d6a8f9467308308" "cafebabe", "facedbaddecaf888",
      "feedfacedeadbeeffeedfacedeadbeefabaddad2",
      "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
      "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
      "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
      "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091"
      "5bc94fbc3221a5db94fae95ae7121a47" },
    /* Same document, test case 16 (AES-256). */
    { "gcm256-tc16", ENCR_AES_GCM_16, 256,
      "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308" "cafebabe",
      "facedbaddecaf888", "feedfacedeadbeeffeedfacedeadbeefabaddad2",
      "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
      "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
      "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
      "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"
      "76fc6ece0f4e1768cddf8853bb2d551b" },
    /* Same document, test case 2 (AES-128, zero key/IV, no AAD). */
    { "gcm128-tc2", ENCR_AES_GCM_16, 128,
      "00000000000000000000000000000000" "00000000", "0000000000000000", "",
      "00000000000000000000000000000000",
      "0388dace60b6a392f328c2b971b2fe78" "ab6e47d42cec13bdf53a67b21257bddf" },
    /* RFC 8439 §2.8.2 (= RFC 7539 §2.8.2): nonce 07000000 | 4041424344454647,
     * i.e. salt 07000000 and explicit IV as RFC 7634 §2 splits it. */
    { "chacha20poly1305-rfc8439", ENCR_CHACHA20_POLY1305, 256,
      "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f" "07000000",
      "4041424344454647", "50515253c0c1c2c3c4c5c6c7",
      "4c616469657320616e642047656e746c656d656e206f662074686520636c6173"
      "73206f66202739393a204966204920636f756c64206f6666657220796f75206f"
      "6e6c79206f6e652074697020666f7220746865206675747572652c2073756e73"
      "637265656e20776f756c642062652069742e",
      "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6"
      "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36"
      "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
      "3ff4def08e4b7a9de576d26586cec64b6116"
      "1ae10b594f09e26a7e902ecbd0600691" },
};

/* AES-256-CBC ciphertext: NIST SP 800-38A F.2.5; ICV: HMAC-SHA-256-128 over
 * aad | iv | ciphertext [| trailer] from gen_ikev2_vectors.py. */
static const char *f25_key = "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4";
static const char *f25_iv = "000102030405060708090a0b0c0d0e0f";
static const char *f25_plain =
    "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710";
static const char *f25_ct =
    "f58c4c04d6e5f1ba779eabfb5f7bfbd69cfc4e967edb808d679f777bc6702c7d"
    "39f23369a9d9bacfa530e26304231461b2eb05e2c39be9fcda6c19078c6a9d1b";

/* RFC 7748 §6.1 */
static const char *x25519_a = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
static const char *x25519_a_pub = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";
static const char *x25519_b = "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb";
static const char *x25519_b_pub = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f";
static const char *x25519_k = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742";

/* RFC 5903 §8.1-8.3: private i and r, public values x|y as in the KE payload,
 * shared secret x of g^ir. */
static const struct {
    uint16_t ke;
    const char *i, *gix_giy, *r, *grx_gry, *girx;
} rfc5903[] = {
    { KE_ECP256,
      "C88F01F5 10D9AC3F 70A292DA A2316DE5 44E9AAB8 AFE84049 C62A9C57 862D1433",
      "DAD0B653 94221CF9 B051E1FE CA5787D0 98DFE637 FC90B9EF 945D0C37 72581180"
      "5271A046 1CDB8252 D61F1C45 6FA3E59A B1F45B33 ACCF5F58 389E0577 B8990BB3",
      "C6EF9C5D 78AE012A 011164AC B397CE20 88685D8F 06BF9BE0 B283AB46 476BEE53",
      "D12DFB52 89C8D4F8 1208B702 70398C34 2296970A 0BCCB74C 736FC755 4494BF63"
      "56FBF3CA 366CC23E 8157854C 13C58D6A AC23F046 ADA30F83 53E74F33 039872AB",
      "D6840F6B 42F6EDAF D13116E0 E1256520 2FEF8E9E CE7DCE03 812464D0 4B9442DE" },
    { KE_ECP384,
      "099F3C70 34D4A2C6 99884D73 A375A67F 7624EF7C 6B3C0F16 0647B674 14DCE655"
      "E35B5380 41E649EE 3FAEF896 783AB194",
      "667842D7 D180AC2C DE6F74F3 7551F557 55C7645C 20EF73E3 1634FE72 B4C55EE6"
      "DE3AC808 ACB4BDB4 C88732AE E95F41AA"
      "9482ED1F C0EEB9CA FC498462 5CCFC23F 65032149 E0E144AD A0241815 35A0F38E"
      "EB9FCFF3 C2C947DA E69B4C63 4573A81C",
      "41CB0779 B4BDB85D 47846725 FBEC3C94 30FAB46C C8DC5060 855CC9BD A0AA2942"
      "E0308312 916B8ED2 960E4BD5 5A7448FC",
      "E558DBEF 53EECDE3 D3FCCFC1 AEA08A89 A987475D 12FD950D 83CFA417 32BC509D"
      "0D1AC43A 0336DEF9 6FDA41D0 774A3571"
      "DCFBEC7A ACF31964 72169E83 8430367F 66EEBE3C 6E70C416 DD5F0C68 759DD1FF"
      "F83FA401 42209DFF 5EAAD96D B9E6386C",
      "11187331 C279962D 93D60424 3FD592CB 9D0A926F 422E4718 7521287E 7156C5C4"
      "D6031355 69B9E9D0 9CF5D4A2 70F59746" },
    { KE_ECP521,
      "0037ADE9 319A89F4 DABDB3EF 411AACCC A5123C61 ACAB57B5 393DCE47 608172A0"
      "95AA85A3 0FE1C295 2C6771D9 37BA9777 F5957B26 39BAB072 462F68C2 7A57382D 4A52",
      "0015417E 84DBF28C 0AD3C278 713349DC 7DF153C8 97A1891B D98BAB43 57C9ECBE"
      "E1E3BF42 E00B8E38 0AEAE57C 2D107564 94188594 2AF5A7F4 601723C4 195D176C ED3E"
      "017CAE20 B6641D2E EB695786 D8C94614 6239D099 E18E1D5A 514C739D 7CB4A10A"
      "D8A78801 5AC405D7 799DC75E 7B7D5B6C F2261A6A 7F150743 8BF01BEB 6CA3926F 9582",
      "0145BA99 A847AF43 793FDD0E 872E7CDF A16BE30F DC780F97 BCCC3F07 8380201E"
      "9C677D60 0B343757 A3BDBF2A 3163E4C2 F869CCA7 458AA4A4 EFFC311F 5CB15168 5EB9",
      "00D0B397 5AC4B799 F5BEA16D 5E13E9AF 971D5E9B 984C9F39 728B5E57 39735A21"
      "9B97C356 436ADC6E 95BB0352 F6BE64A6 C2912D4E F2D0433C ED2B6171 640012D9 460F"
      "015C6822 6383956E 3BD066E7 97B623C2 7CE0EAC2 F551A10C 2C724D98 52077B87"
      "220B6536 C5C408A1 D2AEBB8E 86D678AE 49CB5709 1F473229 6579AB44 FCD17F0F C56A",
      "01144C7D 79AE6956 BC8EDB8E 7C787C45 21CB086F A64407F9 7894E5E6 B2D79B04"
      "D1427E73 CA4BAA24 0A347868 59810C06 B3C715A3 A8CC3151 F2BEE417 996D19F3 DDEA" },
};

#endif
