/* Text helpers every part of the core shares: "did you mean" suggestions
 * and quoting a value for a message (control characters escaped, length
 * capped), so no message can forge a line or flood a terminal. */
#ifndef OO_TEXT_H
#define OO_TEXT_H

#include <stddef.h>
#include "buf.h"
#include "compat.h"

/* Optimal string alignment distance, ASCII case-insensitive; 99 when either
 * string is 40 bytes or longer (enough for option and field names). */
int oo_edit_distance(const char *a, size_t n, const char *b, size_t m);

/* The closest of names[0..count-1] to k (distance <= 1 for keys shorter
 * than 4 bytes, else <= 2), or NULL. */
const char *oo_suggest(const char *k, size_t n, const char *const *names, int count);

/* Appends s as a double-quoted string: '"' and '\' escaped, control bytes
 * and DEL as \n, \r, \t or \xHH, bytes that are not valid UTF-8 as \xHH.
 * At most `cap` input bytes are shown; a longer value ends with
 * `..."(N bytes)`. */
void oo_buf_quote(oo_buf *b, const char *s, size_t n, size_t cap);

/* The default cap for a quoted value in a message. */
#define OO_QUOTE_CAP 120

void oo_text_register(lua_State *L);

#endif
