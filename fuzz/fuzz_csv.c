/* libFuzzer target for the CSV reader. The first input byte chooses the
 * delimiter, the read size and what else runs; the rest is the file.
 *
 * Every input, in C (fast): the tokenizer (csrc/input/csv.c) reads the file whole
 * and cut into reads of 1..16 bytes; the rows must be the same (fields,
 * errors, lines, raw text), and each row's bytes replayed alone (as the
 * grouped mode's spill does) must give the same row again. Fields and raw
 * text must lie inside the buffers.
 *
 * Inputs with the two top bits set, also through the real Lua module
 * (lua/.../input/csv.lua, csrc/input/csv_reader.c, csrc/input/csv_store.c) in one Lua
 * state reused across runs, with a preset header (or the file's own first
 * line), a small row limit sometimes, and grouped mode. The Lua driver
 * asserts invariants, not just the absence of crashes:
 *  - records are numbered 1, 2, 3...; every error has a known code, starts
 *    "file:line: " and holds no control character (values are quoted);
 *  - a payload has a non-empty refCode and items; a channel is a non-empty
 *    string or nil, never in the payload; a split_order names its ref and an
 *    earlier first line;
 *  - the records do not depend on how the input was cut into reads;
 *  - without split orders, grouped mode yields exactly the same records.
 *   make -C fuzz run-csv   (bounded: FUZZ_SECONDS, default 60) */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "../csrc/base/buf.h"
#include "../csrc/base/core.h"
#include "../csrc/input/csv.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "fuzz_csv: %s (line %d)\n", #c, __LINE__);                             \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Appends a description of the tokenizer's current row to out. */
static void describe_row(oo_buf *out, const oo_csv_tok *t) {
    int i;
    oo_buf_addint(out, t->row_line);
    oo_buf_addc(out, ' ');
    oo_buf_addint(out, t->count);
    oo_buf_addc(out, ' ');
    oo_buf_addint(out, t->err * 1000000LL + t->err_field + t->err_line * 10);
    oo_buf_addc(out, ' ');
    oo_buf_addint(out, (long long)t->raw_len);
    oo_buf_add(out, t->buf + t->raw_at, t->raw_len);
    for (i = 0; i < t->nf; i++) {
        oo_buf_addc(out, '|');
        oo_buf_addint(out, (long long)t->f[i].n);
        oo_buf_addc(out, ':');
        oo_buf_add(out, t->f[i].p, t->f[i].n);
    }
    oo_buf_addc(out, '\n');
}

static int inside(const char *p, size_t n, const char *base, size_t len) {
    return n == 0 || (p >= base && p + n <= base + len);
}

/* The row must point into the buffers, and replay to itself. */
static void check_row(const oo_csv_tok *t, oo_buf *row) {
    oo_csv_tok r;
    oo_buf again;
    int i;
    CHECK(t->nf <= t->count);
    CHECK(t->raw_len <= t->row_len && t->raw_at + t->row_len <= t->len);
    for (i = 0; i < t->nf; i++)
        CHECK(inside(t->f[i].p, t->f[i].n, t->buf, t->len) ||
              inside(t->f[i].p, t->f[i].n, t->text, t->textlen));
    oo_csv_tok_init(&r, t->delim, (size_t)1 << 30);
    CHECK(oo_csv_replay(&r, t->buf + t->raw_at, t->row_len, t->row_line));
    CHECK(oo_csv_next_row(&r) == OO_CSV_ROW);
    oo_buf_init(&again);
    describe_row(&again, &r);
    CHECK(again.len == row->len && memcmp(again.data, row->data, row->len) == 0);
    CHECK(oo_csv_next_row(&r) == OO_CSV_END);
    oo_buf_free(&again);
    oo_csv_tok_free(&r);
}

/* Every row of data, fed `step` bytes at a time (0: at once). */
static void tokenize(oo_buf *out, const char *data, size_t size, unsigned char delim, size_t step,
                     int replay) {
    oo_csv_tok t;
    size_t fed = 0;
    oo_csv_tok_init(&t, delim, (size_t)1 << 30);
    for (;;) {
        int rc = oo_csv_next_row(&t);
        if (rc == OO_CSV_ROW) {
            size_t before = out->len;
            describe_row(out, &t);
            if (replay) {
                oo_buf row;
                oo_buf_init(&row);
                oo_buf_add(&row, out->data + before, out->len - before);
                check_row(&t, &row);
                oo_buf_free(&row);
            }
            continue;
        }
        if (rc == OO_CSV_END) break;
        CHECK(rc == OO_CSV_NEED && !t.oom);
        if (fed == size) {
            t.eof = 1;
        } else {
            size_t n = step && size - fed > step ? step : size - fed;
            CHECK(oo_csv_feed(&t, data + fed, n));
            fed += n;
        }
    }
    CHECK(oo_csv_tell(&t) == size);
    oo_csv_tok_free(&t);
}

static void fuzz_tokenizer(const char *data, size_t size, unsigned flags) {
    static const unsigned char delims[] = {',', ';', '\t', '|'};
    unsigned char delim = delims[flags % 4];
    oo_buf whole, cut;
    oo_buf_init(&whole);
    oo_buf_init(&cut);
    tokenize(&whole, data, size, delim, 0, 1);
    tokenize(&cut, data, size, delim, 1 + (flags >> 2) % 16, 0);
    CHECK(!whole.oom && !cut.oom);
    CHECK(whole.len == cut.len && memcmp(whole.data, cut.data, whole.len) == 0);
    oo_buf_free(&whole);
    oo_buf_free(&cut);
}

static const char DRIVER[] =
    "package.path = '../lua/?.lua;' .. package.path\n"
    "local csv = require('optimizely.offline.input.csv')\n"
    "local HEADERS = {\n"
    "  'refCode,orderDate,currency,total,lang,channel,user.id,user.email,user.segments,'\n"
    "    .. 'user.info.g,attr.s,itemRefCode,qty,price,item.attr.z,',\n"
    "  'refCode,itemRefCode,qty',\n"
    "  'itemRefCode,attr.note,refCode,channel',\n"
    "}\n"
    "local CODES = { order = true, split_order = true, row = true, header = true,\n"
    "  too_long = true, storage = true, read_error = true }\n"
    "local function handle(data)\n"
    "  local pos = 1\n"
    "  return { read = function(_, n)\n"
    "    if pos > #data then return nil end\n"
    "    local s = data:sub(pos, pos + n - 1)\n"
    "    pos = pos + #s\n"
    "    return s\n"
    "  end }\n"
    "end\n"
    "local function dump(v, out)\n"
    "  if type(v) ~= 'table' then out[#out + 1] = type(v) .. ':' .. tostring(v); return end\n"
    "  local keys = {}\n"
    "  for k in pairs(v) do keys[#keys + 1] = tostring(k) end\n"
    "  table.sort(keys)\n"
    "  out[#out + 1] = '{'\n"
    "  for _, k in ipairs(keys) do\n"
    "    out[#out + 1] = k .. '='\n"
    "    local x = v[k]\n"
    "    if x == nil then x = v[tonumber(k)] end\n"
    "    dump(x, out)\n"
    "  end\n"
    "  out[#out + 1] = '}'\n"
    "end\n"
    "local function check(rec, index)\n"
    "  assert(rec.index == index, 'index')\n"
    "  assert(math.type(rec.line) == 'integer' and rec.line >= 1, 'line')\n"
    "  if rec.error then\n"
    "    assert(CODES[rec.code], 'code ' .. tostring(rec.code))\n"
    "    local head = 'f:' .. rec.line .. ': '\n"
    "    assert(rec.error:sub(1, #head) == head, rec.error)\n"
    "    assert(not rec.error:find('%c'), 'control character in ' .. rec.error)\n"
    "    if rec.code == 'split_order' then\n"
    "      assert(type(rec.ref) == 'string' and rec.first_line < rec.line, 'split')\n"
    "    end\n"
    "  else\n"
    "    local o = rec.payload.order\n"
    "    assert(type(o.refCode) == 'string' and o.refCode ~= '', 'refCode')\n"
    "    assert(#o.items >= 1, 'items')\n"
    "    assert(rec.channel == nil or (type(rec.channel) == 'string' and rec.channel ~= ''))\n"
    "    assert(rec.payload.channel == nil and o.channel == nil, 'channel in payload')\n"
    "  end\n"
    "end\n"
    "local function run(data, opts)\n"
    "  local state = { size = #data }\n"
    "  local out, index, seen = {}, 0, {}\n"
    "  for rec in csv.new(handle(data), 'f', opts, state) do\n"
    "    index = index + 1\n"
    "    check(rec, index)\n"
    "    if rec.code then seen[rec.code] = true end\n"
    "    dump(rec, out)\n"
    "  end\n"
    "  if not (seen.too_long or seen.header or seen.storage) then assert(state.bytes == #data, "
    "'bytes') end\n"
    "  return table.concat(out, ' '), seen\n"
    "end\n"
    "function fuzz(data, flags)\n"
    "  local delim = ({ ',', ';', '\\t', '|' })[flags % 4 + 1]\n"
    "  local h = HEADERS[(flags >> 2) % 4]\n"
    "  if h then data = h:gsub(',', delim) .. '\\n' .. data end\n"
    "  local chunk = ({ 1, 3, 7, 64 })[(flags >> 4) % 4 + 1]\n"
    "  local max = (flags & 32) ~= 0 and 48 or nil\n"
    "  local opts = { delimiter = delim, max_record_bytes = max, seen_filter_bytes = 64 }\n"
    "  local whole, seen = run(data, opts)\n"
    "  opts.chunk_size = chunk\n"
    "  local cut, seen2 = run(data, opts)\n"
    "  if not seen.too_long and not seen2.too_long then\n"
    "    assert(whole == cut, 'the reads changed the records')\n"
    "  end\n"
    "  if (flags & 16) ~= 0 and not seen.too_long and not seen.split_order then\n"
    "    opts.order_rows = 'grouped'\n"
    "    opts.chunk_size = nil\n"
    "    assert(run(data, opts) == whole, 'grouped differs')\n"
    "  end\n"
    "end\n";

/* ASan fills every new allocation with a pattern (4 KiB of it by default):
 * the reader's buffers start at 4 KiB, so that fill was a fifth of the
 * time. Uninitialised reads are MSan's business anyway. */
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "max_malloc_fill_size=0"; }

static int open_core(lua_State *L) {
    lua_newtable(L);
    oo_text_register(L);
    oo_csv_register(L);
    return 1;
}

static lua_State *start(void) {
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, open_core);
    lua_setfield(L, -2, "optimizely.offline.core");
    lua_settop(L, 0);
    if (luaL_dostring(L, DRIVER) != LUA_OK) {
        fprintf(stderr, "fuzz_csv driver: %s\n", lua_tostring(L, -1));
        abort();
    }
    return L;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static lua_State *L;
    if (size < 1) return 0;
    fuzz_tokenizer((const char *)data + 1, size - 1, data[0]);
    if ((data[0] & 0xC0) != 0xC0) return 0;
    if (!L) L = start();
    lua_settop(L, 0);
    lua_getglobal(L, "fuzz");
    lua_pushlstring(L, (const char *)data + 1, size - 1);
    lua_pushinteger(L, data[0]);
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
        fprintf(stderr, "fuzz_csv: %s\n", lua_tostring(L, -1));
        abort();
    }
    /* Every run frees what it allocated, so libFuzzer's leak check (which
     * runs whenever a run ends with more mallocs than frees) stays quiet
     * unless the C reader really leaks. */
    lua_gc(L, LUA_GCCOLLECT, 0);
    return 0;
}
