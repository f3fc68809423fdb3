// SPDX-License-Identifier: Apache-2.0
// The public header alone, compiled as C++ (-pedantic -Werror).
#include <m2mvpn/m2mvpn.h>

int main()
{
    m2mvpn *h = nullptr;
    int r = m2mvpn_new(nullptr, nullptr, &h);
    m2mvpn_free(h);
    return r == 0 && M2MVPN_E_NOTSUPP < 0 ? 0 : 1;
}
