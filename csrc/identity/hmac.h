/* Pseudonymised user ids: e-mail normalisation and keyed HMAC-SHA256
 * (OpenSSL libcrypto). The Lua face is optimizely.offline.pseudonym; the
 * user's guide is doc/topics/pseudonymisation.md. */
#ifndef OO_HMAC_H
#define OO_HMAC_H

#include <stddef.h>

#define OO_EMAIL_MAX 254    /* bytes in an e-mail address (RFC 5321 path limit) */
#define OO_PSEUDONYM_MAX 64 /* characters of the longest id (hex of 32 bytes) */
#define OO_HEX_FULL 64
#define OO_B64_FULL 43 /* unpadded base64url of 32 bytes */

/* Normalisation options (flags). */
enum { OO_STRIP_PLUS_TAG = 1, OO_STRIP_DOTS = 2 };
enum { OO_ENC_HEX = 0, OO_ENC_BASE64URL = 1 };

/* The one rule for what is an e-mail address (the encoder's user.email
 * uses it too): at most OO_EMAIL_MAX bytes, valid UTF-8, exactly one @
 * with something on both sides, no space or control character. Returns
 * 0, or -1 with the reason (never the address itself) in why[cap]. */
int oo_email_check(const char *s, size_t n, char *why, size_t cap);

/* Normalises s[0..n) into out[OO_EMAIL_MAX]: trims ASCII whitespace
 * (space, \t, \n, \v, \f, \r) at both ends, lower-cases ASCII A-Z (nothing
 * else), checks the result with oo_email_check, then with
 * OO_STRIP_PLUS_TAG cuts the local part at its first '+' and with
 * OO_STRIP_DOTS removes every '.' of the local part. Returns the length,
 * or -1 with the reason in why[cap]. */
int oo_email_normalise(const char *s, size_t n, int flags, char *out, char *why, size_t cap);

/* Writes the first `length` characters of the encoding of the 32-byte
 * mac into out (no terminator). length must be valid for the encoding. */
void oo_pseudonym_encode(const unsigned char mac[32], int encoding, int length, char *out);

#endif
