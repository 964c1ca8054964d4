/* ISO 4217 currencies and money normalisation: every amount becomes an
 * integer count of the currency's minor unit, rounded half away from zero
 * on the decimal a person wrote. */
#ifndef OO_MONEY_H
#define OO_MONEY_H

#include "buf.h"

/* Largest amount we accept, in major units (documented in the README). */
#define OO_MONEY_MAX_MAJOR 1000000000000LL /* 10^12 */

/* Minor-unit digits (0..4) for an upper-case 3-letter code, or -1 if the
 * code is not in our ISO 4217 table. */
int oo_currency_minor(const char code[3]);

typedef enum {
    OO_MONEY_OK = 0,
    OO_MONEY_NEGATIVE,
    OO_MONEY_NOT_FINITE,
    OO_MONEY_SYNTAX,
    OO_MONEY_TOO_LARGE,
    OO_MONEY_OTHER_CURRENCY, /* a till form's symbol or code is not the order's currency */
    OO_MONEY_GROUPING        /* a till form's separators do not make a number in that style */
} oo_money_status;

/* From a double (the shortest decimal that reads back as v is taken as what
 * the person wrote, so 1.005 rounds to 1.01). */
oo_money_status oo_money_from_double(double v, int minor, long long *out);
/* From an exact integer (Lua 5.3+ integer subtype). */
oo_money_status oo_money_from_integer(long long v, int minor, long long *out);
/* From a plain decimal string: digits, optionally '.' and more digits. */
oo_money_status oo_money_from_string(const char *s, size_t n, int minor, long long *out);

/* Amounts as tills write them (opt-in, never the encoder's default): the
 * flags say which forms are accepted; either one also allows blanks around
 * the amount and thousands grouping in groups of three.
 *   OO_MONEY_DECIMAL_COMMA  ',' is the decimal separator ("2,24",
 *                           "1.234,56"); '.', blanks and '\'' group thousands
 *                           (without it '.' is the decimal separator and ','
 *                           groups: "1,234.56")
 *   OO_MONEY_SYMBOLS        a currency symbol or ISO code before or after the
 *                           amount ("£2.24", "2,24 €", "GBP 2.24") is dropped
 *                           when it names `currency` (3 upper-case letters);
 *                           another currency's is OO_MONEY_OTHER_CURRENCY
 * The result is exact to the minor unit, as oo_money_from_string's (digits
 * past the minor unit round half away from zero). On OO_MONEY_OTHER_CURRENCY
 * `found` (when not NULL) holds the symbol seen, NUL-terminated (cap 16). */
#define OO_MONEY_DECIMAL_COMMA 1u
#define OO_MONEY_SYMBOLS 2u
oo_money_status oo_money_from_till(const char *s, size_t n, int minor, const char currency[3],
                                   unsigned flags, long long *out, char found[16]);

/* Appends amount (minor units) with exactly `minor` decimals: 9000,2 -> 90.00 */
void oo_money_emit(oo_buf *b, long long amount, int minor);

#endif
