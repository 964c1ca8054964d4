/* UTF-8 validation and JSON string escaping. */
#ifndef OO_UTF8_H
#define OO_UTF8_H

#include <stddef.h>
#include "buf.h"

/* Returns 0 if s[0..n) is well-formed UTF-8 (no overlongs, no surrogates,
 * nothing above U+10FFFF); otherwise 1 + the byte offset of the first bad byte. */
size_t oo_utf8_check(const char *s, size_t n);

/* Appends s as a JSON string literal (with the quotes). s must be valid UTF-8.
 * Escapes '"', '\\' and control characters; everything else is copied. */
void oo_json_string(oo_buf *b, const char *s, size_t n);

#endif
