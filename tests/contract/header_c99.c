/* SPDX-License-Identifier: Apache-2.0 */
/* The public header alone, as C99 with -pedantic -Werror (see meson.build). */
#include <m2mvpn/m2mvpn.h>

int main(void)
{
    m2mvpn_status st = { 0 };
    st.struct_size = sizeof(st);
    return st.struct_size == sizeof(st) && M2MVPN_E_INVAL < 0 ? 0 : 1;
}
