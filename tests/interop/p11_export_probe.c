/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Test helper (test_hwcred.py compiles it): tries to read a private key out
 * of a PKCS#11 token the way an attacker with the PIN would, with
 * C_GetAttributeValue(CKA_VALUE), and prints what the token answered:
 *   value_rv=0x<CKR> value_len=<n> extractable=<0|1> sensitive=<0|1>
 * usage: p11_export_probe MODULE TOKEN_LABEL PIN KEY_LABEL [--make-readable]
 * --make-readable first generates, as KEY_LABEL, an EC key that is neither
 * sensitive nor protected from extraction (the control case).
 */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#include <p11-kit/pkcs11.h>

int main(int argc, char **argv)
{
    if (argc != 5 && !(argc == 6 && strcmp(argv[5], "--make-readable") == 0))
        return 2;
    void *dl = dlopen(argv[1], RTLD_NOW);
    CK_C_GetFunctionList gfl = dl ? (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList") : NULL;
    CK_FUNCTION_LIST_PTR f = NULL;
    if (!gfl || gfl(&f) != CKR_OK || f->C_Initialize(NULL) != CKR_OK)
        return 3;
    CK_SLOT_ID slots[16];
    CK_ULONG n = 16;
    if (f->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK)
        return 3;
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        char label[33];
        if (f->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
            continue;
        memcpy(label, ti.label, 32);
        label[32] = '\0';
        for (int k = 31; k >= 0 && label[k] == ' '; k--)
            label[k] = '\0';
        if (strcmp(label, argv[2]) != 0)
            continue;
        CK_SESSION_HANDLE s;
        if (f->C_OpenSession(slots[i], CKF_SERIAL_SESSION, NULL, NULL, &s) != CKR_OK ||
            f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)argv[3], strlen(argv[3])) != CKR_OK)
            return 4;
        if (argc == 6) {
            CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
            static const CK_BYTE p256[] = { 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07 };
            CK_ATTRIBUTE pub[] = { { CKA_TOKEN, &no, sizeof no }, { CKA_EC_PARAMS, (void *)p256, sizeof p256 } };
            CK_ATTRIBUTE priv[] = { { CKA_TOKEN, &no, sizeof no }, { CKA_SENSITIVE, &no, sizeof no },
                                    { CKA_EXTRACTABLE, &yes, sizeof yes },
                                    { CKA_LABEL, argv[4], strlen(argv[4]) } };
            CK_MECHANISM m = { CKM_EC_KEY_PAIR_GEN, NULL, 0 };
            CK_OBJECT_HANDLE hp, hk;
            if (f->C_GenerateKeyPair(s, &m, pub, 2, priv, 4, &hp, &hk) != CKR_OK)
                return 7;
        }
        CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
        CK_ATTRIBUTE t[2] = { { CKA_CLASS, &cls, sizeof cls }, { CKA_LABEL, argv[4], strlen(argv[4]) } };
        CK_OBJECT_HANDLE h;
        CK_ULONG found = 0;
        f->C_FindObjectsInit(s, t, 2);
        f->C_FindObjects(s, &h, 1, &found);
        f->C_FindObjectsFinal(s);
        if (!found)
            return 5;
        unsigned char value[8192];
        CK_BBOOL ext = 0, sens = 0;
        CK_ATTRIBUTE v = { CKA_VALUE, value, sizeof value };
        CK_RV rv = f->C_GetAttributeValue(s, h, &v, 1);
        CK_ATTRIBUTE flags[2] = { { CKA_EXTRACTABLE, &ext, sizeof ext }, { CKA_SENSITIVE, &sens, sizeof sens } };
        f->C_GetAttributeValue(s, h, flags, 2);
        printf("value_rv=0x%lx value_len=%ld extractable=%d sensitive=%d\n", (unsigned long)rv,
               rv == CKR_OK ? (long)v.ulValueLen : -1L, ext, sens);
        f->C_Logout(s);
        f->C_Finalize(NULL);
        return 0;
    }
    return 6;
}
