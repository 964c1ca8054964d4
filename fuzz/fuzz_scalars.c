/* libFuzzer target for the encoder's scalar parsers: dates, money strings
 * (plain and as tills write them), UTF-8 validation and JSON escaping.
 * Checks invariants, not just crashes: a parsed date formats and re-parses
 * to the same instant; a till amount is exact (its plain form reads back to
 * the same minor units, written with either decimal separator); an escaped
 * valid string contains no raw control byte.
 *   make -C fuzz run        (bounded: FUZZ_SECONDS, default 60) */
#include <assert.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "../csrc/base/buf.h"
#include "../csrc/payload/date.h"
#include "../csrc/payload/money.h"
#include "../csrc/base/utf8.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *s = (const char *)data;
    long long t, t2, amount;
    const char *why;
    int minor;

    if (oo_date_parse(s, size, &t, &why) == OO_DATE_OK) {
        char out[24];
        assert(t >= OO_DATE_MIN && t <= OO_DATE_MAX);
        oo_date_format(t, out);
        assert(oo_date_parse(out, 23, &t2, &why) == OO_DATE_OK && t2 == t);
    }
    for (minor = 0; minor <= 4; minor++) {
        if (oo_money_from_string(s, size, minor, &amount) == OO_MONEY_OK) {
            oo_buf b;
            long long again;
            assert(amount >= 0);
            oo_buf_init(&b);
            oo_money_emit(&b, amount, minor);
            /* the emitted form is itself a plain decimal that parses to the same amount */
            assert(oo_money_from_string(b.data, b.len, minor, &again) == OO_MONEY_OK && again == amount);
            oo_buf_free(&b);
        }
    }
    {
        static const char *const curs[] = {"GBP", "EUR", "JPY", "KWD", "USD", "SEK"};
        unsigned flags;
        for (flags = 1; flags <= 3; flags++) {
            const char *cur = curs[(size ? data[0] : 0) % 6];
            char found[16];
            minor = oo_currency_minor(cur);
            if (oo_money_from_till(s, size, minor, cur, flags, &amount, found) == OO_MONEY_OK) {
                oo_buf b;
                long long again;
                size_t i;
                assert(amount >= 0);
                oo_buf_init(&b);
                oo_money_emit(&b, amount, minor);
                assert(oo_money_from_string(b.data, b.len, minor, &again) == OO_MONEY_OK && again == amount);
                if (flags & OO_MONEY_DECIMAL_COMMA)
                    for (i = 0; i < b.len; i++)
                        if (b.data[i] == '.') b.data[i] = ',';
                assert(oo_money_from_till(b.data, b.len, minor, cur, flags, &again, found) == OO_MONEY_OK &&
                       again == amount);
                oo_buf_free(&b);
            }
        }
    }
    if (size >= 8) {
        double v;
        memcpy(&v, data, sizeof v);
        if (oo_money_from_double(v, 2, &amount) == OO_MONEY_OK) assert(amount >= 0);
    }
    if (oo_utf8_check(s, size) == 0) {
        oo_buf b;
        size_t i;
        oo_buf_init(&b);
        oo_json_string(&b, s, size);
        assert(!b.oom && b.len >= size + 2);
        for (i = 0; i < b.len; i++) assert((unsigned char)b.data[i] >= 0x20);
        oo_buf_free(&b);
    }
    return 0;
}
