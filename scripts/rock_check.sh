#!/bin/sh
# The rock as a new user meets it (CI runs this from .ci/run):
#   1. the two rockspecs agree (only version and source differ) and lint;
#   2. pack a .src.rock from this checkout: `git archive` of the tree (HEAD
#      plus uncommitted changes to tracked files), a copy of the release
#      rockspec whose source.url is that tarball, `luarocks pack`;
#   3. install the packed rock into empty trees — Lua 5.4, Lua 5.1, LuaJIT —
#      with LuaRocks told that Debian provides argparse and luaexpat (no
#      server is asked for anything), and `luarocks make` the checkout into
#      another, then in each:
#        - run the command by its absolute path with an empty environment
#          (--version, validate of examples/ orders, convert to NDJSON and
#          validate that, the per-Lua name);
#        - require("optimizely.offline") with nothing but that tree on the path;
#        - find the man page in <tree>/share/man/man1;
#   4. install both Luas' rocks into one shared tree: each keeps its
#      optimizely-offline-<abi> command.
#
#   sh scripts/rock_check.sh            run the checks
#   sh scripts/rock_check.sh pack DIR   only pack; prints DIR/optimizely-offline-<v>-1.src.rock
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/rock_check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM
failures=0

say() { printf 'rock_check: %s\n' "$*"; }
fail() { printf 'rock_check: FAIL: %s\n' "$*" >&2; failures=$((failures + 1)); }
die() { printf 'rock_check: %s\n' "$*" >&2; exit 1; }

# The release rockspec is the one whose version is the C core's OO_VERSION.
VERSION=$(sed -n 's/^#define OO_VERSION "\(.*\)"$/\1/p' csrc/base/core.h)
[ -n "$VERSION" ] || die "no OO_VERSION in csrc/base/core.h"
RELEASE=optimizely-offline-$VERSION-1.rockspec
[ -f "$RELEASE" ] || die "no $RELEASE for OO_VERSION $VERSION (csrc/base/core.h): add it (a copy of the scm one)"
SCM=optimizely-offline-scm-1.rockspec

# ---------------------------------------------------------------- rockspecs
check_rockspecs() {
  lua5.4 - "$SCM" "$RELEASE" "$VERSION" <<'EOF' || fail "the rockspecs differ (see above)"
local function load(path)
  local env = {}
  local chunk = assert(loadfile(path, "t", env))
  chunk()
  return env
end
local function show(v, ind)
  if type(v) ~= "table" then return string.format("%q", tostring(v)) end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  local out = {}
  for _, k in ipairs(keys) do out[#out + 1] = ind .. "  " .. tostring(k) .. " = " .. show(v[k], ind .. "  ") end
  return "{\n" .. table.concat(out, "\n") .. "\n" .. ind .. "}"
end
local scm, rel, version = load(arg[1]), load(arg[2]), arg[3]
local ok = true
if rel.version ~= version .. "-1" then
  io.stderr:write(arg[2], ": version ", tostring(rel.version), ", expected ", version, "-1\n"); ok = false
end
if not (rel.source and rel.source.tag == "v" .. version) then
  io.stderr:write(arg[2], ": source.tag should be v", version, "\n"); ok = false
end
if not (rel.source and scm.source and rel.source.url == scm.source.url) then
  io.stderr:write("source.url differs between ", arg[1], " and ", arg[2], "\n"); ok = false
end
scm.version, rel.version, scm.source, rel.source = nil, nil, nil, nil
if show(scm, "") ~= show(rel, "") then
  io.stderr:write(arg[1], " and ", arg[2], " differ beyond version and source:\n",
    arg[1], " = ", show(scm, ""), "\n", arg[2], " = ", show(rel, ""), "\n")
  ok = false
end
os.exit(ok and 0 or 1)
EOF
  for r in "$SCM" "$RELEASE"; do
    luarocks lint "$r" >/dev/null 2>"$WORK/lint.err" || { cat "$WORK/lint.err" >&2; fail "luarocks lint $r"; }
  done
}

# ---------------------------------------------------------------- pack
# Prints the path of the packed .src.rock.
pack() {
  out=$1
  mkdir -p "$WORK/src" "$out"
  # HEAD plus uncommitted changes to tracked files (untracked files are not in
  # the rock: commit or `git add` them first).
  rev=$(git stash create 2>/dev/null || true)
  [ -n "$rev" ] || rev=HEAD
  base=optimizely-offline-$VERSION
  git archive --format=tar.gz --prefix="$base/" -o "$WORK/src/$base.tar.gz" "$rev"
  # the release rockspec, its source being that tarball
  sed -e "s|^   url = .*|   url = \"file://$WORK/src/$base.tar.gz\",|" \
      -e "s|^   tag = .*|   dir = \"$base\",|" "$RELEASE" >"$WORK/src/$RELEASE"
  grep -q "file://$WORK/src/$base.tar.gz" "$WORK/src/$RELEASE" || die "could not point $RELEASE at the tarball"
  (cd "$out" && luarocks pack "$WORK/src/$RELEASE" >"$WORK/pack.log" 2>&1) ||
    { cat "$WORK/pack.log" >&2; die "luarocks pack failed"; }
  rm -f "$WORK/src/$base.tar.gz" # the rock must carry its own sources
  rock=$out/optimizely-offline-$VERSION-1.src.rock
  [ -f "$rock" ] || die "luarocks pack made no $rock"
  echo "$rock"
}

if [ "${1:-}" = pack ]; then
  [ $# -eq 2 ] || die "usage: sh scripts/rock_check.sh pack DIR"
  mkdir -p "$2"
  dir=$(cd "$2" && pwd)
  pack "$dir"
  exit 0
fi

# ---------------------------------------------------------------- trees
# A LuaRocks config per Lua: Debian's argparse and luaexpat stand in for the
# rocks (so the rockspec's dependencies are checked by name, not skipped), and
# no server is ever asked. Its interpreter and headers for LuaJIT.
deb_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null | sed 's/^[0-9]*://; s/[+~].*//'; }
config() { # name, [interpreter, incdir]
  cfg=$WORK/config-$1.lua
  {
    echo 'rocks_servers = {}'
    if command -v dpkg-query >/dev/null 2>&1; then
      printf 'rocks_provided = { argparse = "%s", luaexpat = "%s" }\n' \
        "$(deb_version lua-argparse)" "$(deb_version lua-expat)"
    fi
    [ -z "${2:-}" ] || printf 'lua_interpreter = "%s"\nvariables = { LUA_INCDIR = "%s" }\n' "$2" "$3"
  } >"$cfg"
  echo "$cfg"
}
DEPS_MODE=one
command -v dpkg-query >/dev/null 2>&1 && [ -n "$(deb_version lua-argparse)" ] && [ -n "$(deb_version lua-expat)" ] ||
  { DEPS_MODE=none; say "Debian's lua-argparse/lua-expat not found: installing with --deps-mode=none"; }

# luarocks <luaver> <config> <args...>
lr() { v=$1 cfg=$2; shift 2; LUAROCKS_CONFIG=$cfg luarocks --lua-version="$v" "$@"; }

install_rock() { # tree, luaver, config, rock
  if ! lr "$2" "$3" install --deps-mode="$DEPS_MODE" --tree "$1" "$4" >"$WORK/install.log" 2>&1; then
    tail -n 30 "$WORK/install.log" >&2; fail "luarocks --lua-version=$2 install $4 into $1"; return 1
  fi
}

# require("optimizely.offline") from tree $1 with interpreter $2 (ABI $3),
# nothing but that tree on the path; $4 labels messages.
require_from() {
  tree=$1 lua=$2 abi=$3 label=$4
  (cd "$WORK" && env -i PATH=/usr/bin:/bin LUA_PATH="$tree/share/lua/$abi/?.lua;$tree/share/lua/$abi/?/init.lua" \
    LUA_CPATH="$tree/lib/lua/$abi/?.so" OO_TREE="$tree" OO_VERSION="$VERSION" "$lua" -e '
      local tree, version = os.getenv("OO_TREE"), os.getenv("OO_VERSION")
      local offline = require("optimizely.offline")
      local src = debug.getinfo(offline.encode, "S").source
      assert(src:sub(1, #tree + 1) == "@" .. tree, "loaded from " .. src)
      assert(offline.VERSION == version, "VERSION " .. tostring(offline.VERSION))
      assert(offline.encode({ order = { refCode = "R-1", orderDate = "2024-05-16T14:25:00 GMT",
        currency = "GBP", total = 1, items = { { refCode = "S", qty = 1, price = 1 } } } }))
    ') >"$WORK/out" 2>&1 || fail "$label: require from the tree alone: $(cat "$WORK/out")"
}

# Runs the installed command and a require from tree $1 with interpreter $2
# (an absolute path) for ABI $3.
check_tree() {
  tree=$1 lua=$2 abi=$3
  label="$(basename "$tree") ($lua)"
  cmd=$tree/bin/optimizely-offline
  run() { (cd "$WORK" && env -i PATH=/usr/bin:/bin HOME="$WORK" LANG=C.UTF-8 "$@"); }

  [ -x "$cmd" ] || { fail "$label: no $cmd"; return; }
  head -n 1 "$cmd" | grep -qx "#!$lua" || fail "$label: $cmd starts with '$(head -n 1 "$cmd")', not '#!$lua'"
  if run "$cmd" --version >"$WORK/out" 2>&1; then
    grep -q "$VERSION" "$WORK/out" || fail "$label: --version printed no $VERSION: $(cat "$WORK/out")"
  elif grep -q "unknown option '--version'" "$WORK/out"; then
    # --version is not on main yet (issue 13, the CLI part): --help instead
    say "$label: --version not available yet; checking --help"
    run "$cmd" --help >"$WORK/out" 2>&1 || fail "$label: --help failed: $(cat "$WORK/out")"
  else
    fail "$label: --version failed: $(cat "$WORK/out")"
  fi
  run "$cmd-$abi" --help >"$WORK/out" 2>&1 || fail "$label: $cmd-$abi --help failed: $(head -n 5 "$WORK/out")"
  run "$cmd" validate "$ROOT/examples/legacy-orders.xml" >"$WORK/out" 2>&1 ||
    fail "$label: validate legacy-orders.xml: $(tail -n 5 "$WORK/out")"
  # The example transform pseudonymises e-mails: it needs a key (as `make demo` sets one).
  run env OPTIMIZELY_PSEUDONYM_KEY=rock-check-pseudonym-key-not-a-secret \
    "$cmd" validate "$ROOT/examples/till-export.csv" --transform "$ROOT/examples/transform.lua" >"$WORK/out" 2>&1 ||
    fail "$label: validate till-export.csv: $(tail -n 5 "$WORK/out")"
  # NDJSON, as convert writes it, read back by the installed reader.
  run "$cmd" convert "$ROOT/examples/legacy-orders.xml" -o "$WORK/orders-$(basename "$tree").ndjson" >"$WORK/out" 2>&1 &&
    run "$cmd" validate "$WORK/orders-$(basename "$tree").ndjson" >"$WORK/out" 2>&1 ||
    fail "$label: convert + validate NDJSON: $(tail -n 5 "$WORK/out")"
  require_from "$tree" "$lua" "$abi" "$label"
  # man finds the page from PATH (<tree>/bin -> <tree>/share/man)
  [ "$(run env PATH="$tree/bin:/usr/bin:/bin" man -w optimizely-offline 2>&1)" = \
    "$tree/share/man/man1/optimizely-offline.1" ] || fail "$label: man -w does not find <tree>/share/man/man1/optimizely-offline.1"
  say "$label: checked"
}

check_rockspecs
ROCK=$(pack "$WORK/rocks")
say "packed $(basename "$ROCK") from the checkout"

CFG54=$(config 5.4)
CFG51=$(config 5.1)
CFGJIT=$(config jit luajit /usr/include/luajit-2.1)

# Side by side: one empty tree per Lua, all from the packed rock.
install_rock "$WORK/tree-5.4" 5.4 "$CFG54" "$ROCK" && check_tree "$WORK/tree-5.4" /usr/bin/lua5.4 5.4
if install_rock "$WORK/tree-5.1" 5.1 "$CFG51" "$ROCK"; then
  check_tree "$WORK/tree-5.1" /usr/bin/lua5.1 5.1
  # LuaJIT loads a core built for PUC 5.1 from the same tree
  command -v luajit >/dev/null 2>&1 && require_from "$WORK/tree-5.1" /usr/bin/luajit 5.1 "tree-5.1 (luajit)"
fi
if command -v luajit >/dev/null 2>&1 && install_rock "$WORK/tree-jit" 5.1 "$CFGJIT" "$ROCK"; then
  check_tree "$WORK/tree-jit" /usr/bin/luajit 5.1
fi

# `luarocks make` from the checkout keeps working (the developer's install).
if lr 5.4 "$CFG54" make --deps-mode="$DEPS_MODE" --tree "$WORK/make-5.4" "$SCM" >"$WORK/make.log" 2>&1; then
  check_tree "$WORK/make-5.4" /usr/bin/lua5.4 5.4
else
  tail -n 30 "$WORK/make.log" >&2; fail "luarocks make $SCM"
fi

# One tree shared by two Luas: the binary rocks of the trees above, installed
# together. The last one owns optimizely-offline; each keeps its -<abi> name.
shared=$WORK/tree-shared
shared_ok=1
for v in 5.4 5.1; do
  cfg=$CFG54; [ $v = 5.1 ] && cfg=$CFG51
  mkdir -p "$WORK/bin-$v" # the binary rocks of both Luas have the same name
  if (cd "$WORK/bin-$v" && lr $v "$cfg" pack --tree "$WORK/tree-$v" optimizely-offline >/dev/null 2>&1) &&
     lr $v "$cfg" install --deps-mode="$DEPS_MODE" --tree "$shared" "$WORK/bin-$v"/*.rock >/dev/null 2>&1; then
    :
  else
    fail "shared tree: pack the $v tree's rock and install it"; shared_ok=0
  fi
done
if [ $shared_ok = 1 ]; then
  for v in 5.4 5.1; do
    out=$( (cd "$WORK" && env -i PATH=/usr/bin:/bin "$shared/bin/optimizely-offline-$v" --help) 2>&1) ||
      fail "shared tree: optimizely-offline-$v: $out"
    head -n 1 "$shared/bin/optimizely-offline-$v" | grep -qx "#!/usr/bin/lua$v" ||
      fail "shared tree: optimizely-offline-$v runs $(head -n 1 "$shared/bin/optimizely-offline-$v")"
  done
  [ "$(head -n 1 "$shared/bin/optimizely-offline")" = "#!/usr/bin/lua5.1" ] ||
    fail "shared tree: optimizely-offline should be the last installed (5.1)"
  say "shared tree: optimizely-offline-5.4 and optimizely-offline-5.1 side by side"
fi

if [ $failures -eq 0 ]; then
  say "ok ($VERSION: packed, installed and run for Lua 5.4, 5.1 and LuaJIT)"
else
  say "$failures failure(s)"
  exit 1
fi
