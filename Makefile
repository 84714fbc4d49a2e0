# mpshim build, test and demo entry points. Every target installs what it
# needs on a fresh Debian machine (run as root); see scripts/deps.sh.

SHELL       := /bin/bash
export PATH := /usr/local/go/bin:$(PATH)
GO          ?= go
CC          ?= cc
BIN         := bin

# Binaries exist only once their cmd/ directory does: nothing is built as a
# placeholder.
CMDS        := $(notdir $(patsubst %/,%,$(dir $(wildcard cmd/*/main.go))))
SHIM_SRCS   := $(wildcard shim/*.c)
SHIM_HDRS   := $(wildcard shim/*.h) msgproto/mpproto.h ring/mpring.h ring/mpring_layout.h
SHIM_CFLAGS := -std=gnu11 -O2 -g -fPIC -fvisibility=hidden -Wall -Wextra -Werror \
               -D_GNU_SOURCE -Imsgproto -Iring
SHIM_LIBS   := -ldl -pthread

TARGETS     := $(addprefix $(BIN)/,$(CMDS))
ifneq ($(SHIM_SRCS),)
TARGETS     += $(BIN)/libmpshim.so
endif

TEST_TIMEOUT ?= 25m

.PHONY: all build deps deps-test test soak vet fmt-check generate-check demo bench conformance clean FORCE

all: build

build: deps $(TARGETS)

deps:
	@scripts/deps.sh build

deps-test:
	@scripts/deps.sh test

# Go binaries are built without cgo: the INS sandbox then drops capabilities
# and installs seccomp on every thread (syscall.AllThreadsSyscall).
$(BIN)/%: FORCE
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -o $@ ./cmd/$*

$(BIN)/libmpshim.so: $(SHIM_SRCS) $(SHIM_HDRS) ring/mpring.c
	@mkdir -p $(BIN)
	$(CC) $(SHIM_CFLAGS) -shared -o $@ $(SHIM_SRCS) ring/mpring.c $(SHIM_LIBS)

# fmt-check and vet guard style; the packages' own tests check that the
# generated C headers match their Go sources.
fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

test: deps-test build fmt-check vet
	MPSHIM_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...

# soak is the 11-minute survival run (not part of test): nginx under the
# shim, 10,000 wrk connections over 4 INS, an INS killed every minute, the
# daemon killed and restarted twice; descriptors and memory checked after
# every phase.
soak: deps-test build
	MPSHIM_BIN=$(CURDIR)/$(BIN) MPSHIM_SOAK=1 $(GO) test -count=1 -timeout 30m -v -run TestSoak ./test/soak

demo: deps-test build
	@scripts/demo.sh

# conformance runs all of gVisor's socket test binaries (prebuilt in
# ../shared/conformance/gvisor-socket, or $$MPSHIM_GVISOR_SOCKET) under the
# shim against an isolator, with loopback through the INS and on the kernel,
# and checks every failure against test/conformance/testdata/gvisor-expected.txt;
# it prints the counts per binary (about an hour, needs root). make test runs
# a three-minute subset of the same.
conformance: deps-test build
	MPSHIM_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -timeout 180m -run '^TestGVisorSocketSuite$$' \
		./test/conformance -args -gvisor.all $(if $(GVISOR_LOGS),-gvisor.logs=$(GVISOR_LOGS))

# bench runs the performance harness (needs root): native kernel, a Go
# server through mpnet, and the real servers under the shim, alternated in
# one run; writes bench/results/DATE.md and .png and, for full runs, the
# latest table in BENCHMARKS.md. make bench ARGS=--quick is a smoke run.
bench: build
	@scripts/deps.sh bench
	$(GO) build -o $(BIN)/mpbench ./bench/cmd/mpbench
	$(BIN)/mpbench --bin $(BIN) $(ARGS)
	$(GO) run ./bench/lb

clean:
	rm -rf $(BIN)

FORCE:
