# The README's two commands live here:
#   make demo   set up (packages when root), build, run the main job
#   make test   set up, build every variant, run the full suite
# and the suites one at a time (scripts/test.sh runs each in parallel lanes):
#   make check (= make test-fast)  Lua 5.4 only, every spec file: the one to run often
#   make asan                      the ASan+UBSan build under every spec file
#   make valgrind                  the encoder specs under valgrind
# SPEC=spec/x_spec.lua (several: space-separated) narrows any of them to those
# files; LANES=N sets how many spec files run at once.
# Builds go to build/<variant>/optimizely/offline/core.so, one per Lua.

VARIANTS ?= 5.4 jit
JOBS     ?= 2
BUSTED    = busted --lpath='lua/?.lua;lua/?/init.lua;spec/?.lua'

.PHONY: all deps build demo test check test-fast asan valgrind bench install clean docs lint

all: build

deps:
	@sh scripts/deps.sh

build/%/optimizely/offline/core.so: deps-stamp $(wildcard csrc/*/*.c csrc/*/*.h) CMakeLists.txt
	@cmake -S . -B build/$* -DLUA_VERSION=$(if $(filter asan,$*),5.4,$*) \
	  $(if $(filter asan,$*),-DOO_SANITIZE=ON) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build build/$* -j$(JOBS) >/dev/null
	@echo "built $@"

.PHONY: deps-stamp
deps-stamp: deps

build: $(foreach v,$(VARIANTS),build/$(v)/optimizely/offline/core.so)

# The ASan suite's interpreter: lua5.4 linked with the sanitizers, so that
# only the processes a spec runs under it are instrumented (no LD_PRELOAD).
build/asan-lua: scripts/asan-lua.c
	@mkdir -p build
	@gcc -O1 -g -fsanitize=address,undefined -I/usr/include/lua5.4 scripts/asan-lua.c -o $@ -llua5.4 -lm -ldl

demo: build
	@sh scripts/demo.sh

TEST_ARGS = $(if $(LANES),--lanes $(LANES)) $(SPEC)

test: deps
	@sh scripts/test.sh $(TEST_ARGS)

check: deps
	@sh scripts/test.sh lua5.4 $(TEST_ARGS)

test-fast: check

asan: deps
	@sh scripts/test.sh asan $(TEST_ARGS)

valgrind: deps
	@sh scripts/test.sh valgrind $(TEST_ARGS)

bench: build
	@sh scripts/bench.sh

# The API reference from the LDoc comments and doc/topics/*.md, into
# build/docs/index.html; lists undocumented public functions and LDoc's
# warnings, and checks the man page. DOCS_STRICT=1 makes either fail.
docs: build/5.4/optimizely/offline/core.so
	@lua5.1 scripts/doc_check.lua --self-test
	@lua5.1 scripts/doc_check.lua
	@sh scripts/man_check.sh

# luacheck over the Lua, the require rule, clang-format over csrc/
# (scripts/lint.sh). LINT_STRICT=1 fails on every luacheck warning.
lint:
	@sh scripts/lint.sh

install: deps
	luarocks --lua-version=5.4 make --deps-mode=none optimizely-offline-scm-1.rockspec

clean:
	rm -rf build
