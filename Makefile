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

# gVisor as go.mod pins it plus the patches in third_party/gvisor: every go
# command of this Makefile runs in the workspace scripts/gvisor-overlay.sh
# writes, which replaces the module by a patched tree (the module cache is
# left as it is). A go command run by hand builds unpatched gVisor unless
# it is given the same GOWORK.
GVISOR_WORK := $(CURDIR)/build/gvisor/go.work
export GOWORK := $(GVISOR_WORK)

TARGETS     := $(addprefix $(BIN)/,$(CMDS))
ifneq ($(SHIM_SRCS),)
TARGETS     += $(BIN)/libmpshim.so
endif

TEST_TIMEOUT ?= 25m
SIZE         ?= 200

# Install locations (make install PREFIX=… DESTDIR=…). The configuration
# goes to SYSCONFDIR/mpshim, the unit to UNITDIR, completions to the
# directories bash-completion and zsh search under PREFIX.
PREFIX      ?= /usr/local
DESTDIR     ?=
BINDIR      ?= $(PREFIX)/bin
LIBDIR      ?= $(PREFIX)/lib
SYSCONFDIR  ?= /etc
UNITDIR     ?= $(PREFIX)/lib/systemd/system
DOCDIR      ?= $(PREFIX)/share/doc/mpshim
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR  ?= $(PREFIX)/share/zsh/site-functions
INSTALLED_CMDS := isolator mpshim netflow
# VERSION of the Debian package: 0.0~gitDATE.COMMIT unless given.
VERSION     ?= 0.0~git$(shell git log -1 --format=%cd.%h --date=format:%Y%m%d%H%M%S 2>/dev/null || echo 0)

.PHONY: all build deps deps-test test soak vet fmt-check generate-check demo bench bench-split runsc conformance lb-shares clean FORCE
.PHONY: install install-files uninstall deb

all: build

build: deps $(TARGETS)

$(GVISOR_WORK): go.mod scripts/gvisor-overlay.sh $(wildcard third_party/gvisor/*.patch)
	@scripts/gvisor-overlay.sh

deps:
	@GOWORK=off scripts/deps.sh build

deps-test:
	@GOWORK=off scripts/deps.sh test

# Go binaries are built without cgo: the INS sandbox then drops capabilities
# and installs seccomp on every thread (syscall.AllThreadsSyscall).
$(BIN)/%: FORCE $(GVISOR_WORK)
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

vet: $(GVISOR_WORK)
	$(GO) vet ./...

# Tests are built without cgo, as the binaries are: the INS sandbox then
# drops the capability bounding set on every thread, which TestConfine checks.
test: deps-test build fmt-check vet
	MPSHIM_BIN=$(CURDIR)/$(BIN) CGO_ENABLED=0 $(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...

# soak is the 20-minute survival run (not part of test): nginx under the
# shim, 10,000 wrk connections over 4 INS, an INS killed every minute, the
# daemon killed and restarted twice; descriptors and memory checked after
# every phase.
soak: deps-test build
	MPSHIM_BIN=$(CURDIR)/$(BIN) MPSHIM_SOAK=1 $(GO) test -count=1 -timeout 45m -v -run TestSoak ./test/soak

# lb-shares runs only the load balancer's full-size share check (part of
# test too): 20 INS with weights 1 to 5 behind a VIP, 100,000 connections
# from ten client addresses, every share within ±10% of its weight; it
# logs the largest deviation.
lb-shares: deps-test build
	MPSHIM_BIN=$(CURDIR)/$(BIN) CGO_ENABLED=0 $(GO) test -count=1 -timeout 30m -v -run TestSharesFull ./test/lb

demo: deps-test build
	@scripts/demo.sh

# conformance runs all of gVisor's socket test binaries (prebuilt in
# ../shared/conformance/gvisor-socket, or $$MPSHIM_GVISOR_SOCKET) under the
# shim against an isolator, with loopback through the INS and on the kernel,
# and checks every failure against test/conformance/testdata/gvisor-expected.txt;
# it prints the counts per binary (about an hour, needs root). make test runs
# a subset of the same (about four minutes). Then 100 runs of the 4 MiB echo
# that the zero-window stall of docs/design.md would hang (make test: 20).
conformance: deps-test build
	MPSHIM_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -timeout 180m -run '^TestGVisorSocketSuite$$' \
		./test/conformance -args -gvisor.all $(if $(GVISOR_LOGS),-gvisor.logs=$(GVISOR_LOGS))
	MPSHIM_ZEROWINDOW_RUNS=100 $(GO) test -count=1 -timeout 20m -run '^TestZeroWindow' -v ./isolator/ins/netstack

# bench runs the performance harness (needs root): the same servers on the
# kernel and under the shim (and, with ARGS=--peers=runsc,netstack, inside
# gVisor's runsc and a Go server through mpnet) over one plain veth pair,
# servers and clients pinned to different CPUs, alternated in one run;
# writes bench/results/DATE.md and .png and, for full runs, the latest
# table in BENCHMARKS.md. make bench ARGS=--quick is a smoke run. runsc is
# built from the gVisor module version go.mod pins.
bench: build $(BIN)/udpecho $(if $(findstring runsc,$(ARGS)),runsc)
	@GOWORK=off scripts/deps.sh bench
	$(GO) build -o $(BIN)/mpbench ./bench/cmd/mpbench
	$(BIN)/mpbench --bin $(BIN) --runsc $(BIN)/runsc $(ARGS)
	$(GO) run ./bench/lb
	$(GO) run ./bench/split --size $(SIZE)
	$(GO) run ./bench/split --size $(SIZE) --runs 2 --only shim --bin $(BIN)

# bench-split (also the last part of bench) compares the split tunnel with
# one TCP connection over the best link and with Linux MPTCP over three
# shaped links (needs root and Debian's mptcpd for the MPTCP row), then
# measures curl under the shim through an isolator daemon and its split
# gateway; SIZE is the file in MiB.
bench-split: build
	@GOWORK=off scripts/deps.sh bench
	$(GO) run ./bench/split --size $(SIZE)
	$(GO) run ./bench/split --size $(SIZE) --runs 2 --only shim --bin $(BIN)

# install puts the binaries, libmpshim.so (LIBDIR/mpshim, where mpshim
# finds it), the systemd unit, shell completions and the README in place,
# and the default configuration unless one exists already.
install: build install-files
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "installed; configure uplinks in $(SYSCONFDIR)/mpshim/isolator.yaml, then: systemctl enable --now isolator"

install-files:
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR)/mpshim $(DESTDIR)$(SYSCONFDIR)/mpshim \
		$(DESTDIR)$(UNITDIR) $(DESTDIR)$(DOCDIR) $(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(ZSHCOMPDIR)
	install -m 0755 $(addprefix $(BIN)/,$(INSTALLED_CMDS)) $(DESTDIR)$(BINDIR)/
	install -m 0644 $(BIN)/libmpshim.so $(DESTDIR)$(LIBDIR)/mpshim/libmpshim.so
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/mpshim/isolator.yaml ]; then \
		echo "keeping $(DESTDIR)$(SYSCONFDIR)/mpshim/isolator.yaml (the default is deploy/isolator.yaml)"; \
	else install -m 0644 deploy/isolator.yaml $(DESTDIR)$(SYSCONFDIR)/mpshim/isolator.yaml; fi
	sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' -e 's|@DOCDIR@|$(DOCDIR)|g' \
		deploy/systemd/isolator.service.in >$(DESTDIR)$(UNITDIR)/isolator.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/isolator.service
	install -m 0644 README.md $(DESTDIR)$(DOCDIR)/README.md
	for c in $(INSTALLED_CMDS); do \
		$(BIN)/$$c completion bash >$(DESTDIR)$(BASHCOMPDIR)/$$c && \
		$(BIN)/$$c completion zsh >$(DESTDIR)$(ZSHCOMPDIR)/_$$c || exit 1; \
	done

# uninstall removes what install put in place; the configuration only if
# it is still the default.
uninstall:
	rm -f $(addprefix $(DESTDIR)$(BINDIR)/,$(INSTALLED_CMDS)) $(DESTDIR)$(LIBDIR)/mpshim/libmpshim.so \
		$(DESTDIR)$(UNITDIR)/isolator.service $(DESTDIR)$(DOCDIR)/README.md \
		$(addprefix $(DESTDIR)$(BASHCOMPDIR)/,$(INSTALLED_CMDS)) $(addprefix $(DESTDIR)$(ZSHCOMPDIR)/_,$(INSTALLED_CMDS))
	-rmdir $(DESTDIR)$(LIBDIR)/mpshim $(DESTDIR)$(DOCDIR) 2>/dev/null
	@if cmp -s deploy/isolator.yaml $(DESTDIR)$(SYSCONFDIR)/mpshim/isolator.yaml; then \
		rm -f $(DESTDIR)$(SYSCONFDIR)/mpshim/isolator.yaml; rmdir $(DESTDIR)$(SYSCONFDIR)/mpshim 2>/dev/null || true; \
	elif [ -e $(DESTDIR)$(SYSCONFDIR)/mpshim/isolator.yaml ]; then \
		echo "keeping the changed $(DESTDIR)$(SYSCONFDIR)/mpshim/isolator.yaml"; fi
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

# deb builds bin/mpshim_VERSION_ARCH.deb with dpkg-deb (scripts/deb.sh).
deb: build
	BIN=$(BIN) scripts/deb.sh $(VERSION) $(BIN)

$(BIN)/udpecho: bench/udpecho/udpecho.c
	@mkdir -p $(BIN)
	$(CC) -std=gnu11 -O2 -Wall -Wextra -Werror -o $@ $<

runsc:
	@GOWORK=off scripts/build-runsc.sh $(BIN)/runsc

clean:
	rm -rf $(BIN) build

FORCE:
