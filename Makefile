# The README's two commands live here:
#   make demo   set up (packages when root), build, run the main job
#   make test   set up, build every variant, run the full suite
# Builds go to build/<variant>/optimizely/offline/core.so, one per Lua.

VARIANTS ?= 5.4 jit
JOBS     ?= 2
BUSTED    = busted --lpath='lua/?.lua;lua/?/init.lua;spec/?.lua'

.PHONY: all deps build demo test test-fast asan valgrind bench install clean docs lint

all: build

deps:
	@sh scripts/deps.sh

build/%/optimizely/offline/core.so: deps-stamp $(wildcard csrc/*.c csrc/*.h) CMakeLists.txt
	@cmake -S . -B build/$* -DLUA_VERSION=$(if $(filter asan,$*),5.4,$*) \
	  $(if $(filter asan,$*),-DOO_SANITIZE=ON) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build build/$* -j$(JOBS) >/dev/null
	@echo "built $@"

.PHONY: deps-stamp
deps-stamp: deps

build: $(foreach v,$(VARIANTS),build/$(v)/optimizely/offline/core.so)

demo: build
	@sh scripts/demo.sh

test: deps
	@sh scripts/test.sh

bench: build
	@sh scripts/bench.sh

# The API reference from the LDoc comments and doc/topics/*.md, into
# build/docs/index.html; lists undocumented public functions and LDoc's
# warnings, and checks the man page. DOCS_STRICT=1 makes either fail.
docs: build/5.4/optimizely/offline/core.so
	@lua5.1 scripts/doc_check.lua --self-test
	@lua5.1 scripts/doc_check.lua
	@sh scripts/man_check.sh

# luacheck over the Lua, clang-format (report only) over csrc/. LINT_STRICT=1
# fails on every luacheck warning, not only on files that were clean.
lint:
	@sh scripts/lint.sh

install: deps
	luarocks --lua-version=5.4 make --deps-mode=none optimizely-offline-scm-1.rockspec

clean:
	rm -rf build
