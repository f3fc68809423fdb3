/* SPDX-License-Identifier: Apache-2.0 */
/*
 * JSON text -> json-c tree, for profiles (internal to lib/profile).
 *
 * json-c alone is too lenient and too quiet for device configuration, so the
 * text is first scanned here:
 *  - comments (slash-slash to end of line, slash-star to star-slash) are
 *    accepted and blanked out, keeping line breaks so positions stay true;
 *  - a UTF-8 byte order mark at the start is ignored;
 *  - a key repeated in one object is refused (json-c would keep the last);
 *  - single-quoted strings, raw control characters in strings and NUL bytes
 *    are refused (json-c accepts the first two even in strict mode);
 * then json-c parses in strict mode with UTF-8 validation, at most 32 levels
 * deep, and anything after the top-level value but white space is refused.
 *
 * Secrets: the scanned copy and json-c's token buffer are wiped before they
 * are freed, and json_text_free() wipes every string value of a tree.
 */
#ifndef M2MVPN_PROFILE_JSON_TEXT_H
#define M2MVPN_PROFILE_JSON_TEXT_H

#include <json-c/json.h>
#include <stddef.h>

/* Inputs longer than this are refused (also the profile file size limit). */
#define JSON_TEXT_MAX_BYTES (1024u * 1024u)

/*
 * Parse `len` bytes (no NUL needed). On success *ret is a new tree (free it
 * with json_text_free) and 0 is returned. On failure *ret is untouched,
 * M2MVPN_E_JSON is returned and err gets "line L, column C: what" (1-based;
 * columns count bytes). M2MVPN_E_NOMEM when memory runs out.
 */
int json_text_parse(const char *text, size_t len, json_object **ret, char *err, size_t err_len);

/* Wipe every string value in the tree, then release it. NULL is fine. */
void json_text_free(json_object *root);

#endif
