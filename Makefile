# meshd: `make demo` shows a 3-host mesh, `make test` runs every check.
# Both install what they need first (scripts/deps, scripts/consul-bin).

GO      ?= go
# go needs a home for its caches; a bare environment may lack HOME.
export HOME ?= $(shell getent passwd $$(id -u) | cut -d: -f6)
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
PKGS    := ./...
# Fuzz targets run briefly in `make test`; longer with FUZZTIME=5000000x make fuzz.
# A count of executions, not a duration: Go 1.26's fuzz coordinator can fail
# a target with "context deadline exceeded" when a duration runs out while a
# worker is busy (go.dev/issue/75804, fixed in Go 1.27); a count has no
# deadline to race.
FUZZTIME ?= 50000x

# Debian package version: a release sets it; otherwise 0.0.0~git<commit>.
PKG_VERSION ?= $(shell v=$$(git describe --tags --exact-match 2>/dev/null) && echo $${v#v} || echo 0.0.0~git$$(git rev-parse --short HEAD 2>/dev/null || echo dev))

# The package's maintainer: one place, read by the .deb's control file, its
# changelog and its copyright file.
MAINTAINER := $(shell cat packaging/maintainer)

.PHONY: all build deps consul promtool lint licenses test unit kernel fuzz bench bench-kernel bench-gateway bench-quick demo package clean

all: build

build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o bin/meshd ./cmd/meshd

deps:
	scripts/deps

consul:
	@scripts/consul-bin >/dev/null

promtool:
	@scripts/promtool-bin >/dev/null

lint: deps
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	.bin/staticcheck $(PKGS)
	cd bench && $(GO) vet ./... && ../.bin/staticcheck ./...

# The whole suite with the race detector: unit tests, tests against a real
# Consul, and (as root) the privileged namespace end-to-end tests.
unit: deps consul promtool
	MESHD_CONSUL_BIN=$$(scripts/consul-bin) $(GO) test -race -count=1 -timeout 20m $(PKGS)

# One target per run: go test -fuzz takes a single target.
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzDesire$$' -fuzztime $(FUZZTIME) ./peers
	$(GO) test -run '^$$' -fuzz '^FuzzMetaRoundTrip$$' -fuzztime $(FUZZTIME) ./peers
	$(GO) test -run '^$$' -fuzz '^FuzzSignedEntry$$' -fuzztime $(FUZZTIME) ./peers
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(FUZZTIME) ./snapshot
	$(GO) test -run '^$$' -fuzz '^FuzzAppendEntry$$' -fuzztime $(FUZZTIME) ./snapshot
	$(GO) test -run '^$$' -fuzz '^FuzzDesire$$' -fuzztime $(FUZZTIME) ./gateway
	$(GO) test -run '^$$' -fuzz '^FuzzHTTPDecode$$' -fuzztime $(FUZZTIME) ./catalogsync
	$(GO) test -run '^$$' -fuzz '^FuzzHTTPDecodeMatchesAPI$$' -fuzztime $(FUZZTIME) ./catalogsync
	$(GO) test -run '^$$' -fuzz '^FuzzHTTPDecodeIncremental$$' -fuzztime $(FUZZTIME) ./catalogsync
	$(GO) test -run '^$$' -fuzz '^FuzzParseHint$$' -fuzztime $(FUZZTIME) ./catalogsync
	$(GO) test -run '^$$' -fuzz '^FuzzScanDepth$$' -fuzztime $(FUZZTIME) ./catalogsync
	$(GO) test -run '^$$' -fuzz '^FuzzParseCredential$$' -fuzztime $(FUZZTIME) ./trust
	$(GO) test -run '^$$' -fuzz '^FuzzParseSignature$$' -fuzztime $(FUZZTIME) ./trust
	$(GO) test -run '^$$' -fuzz '^FuzzParseRevocation$$' -fuzztime $(FUZZTIME) ./trust
	$(GO) test -run '^$$' -fuzz '^FuzzBatch$$' -fuzztime $(FUZZTIME) ./trust
	$(GO) test -run '^$$' -fuzz '^FuzzConsume$$' -fuzztime $(FUZZTIME) ./handshake

# Every module linked into bin/meshd must carry a licence from the allow list
# (internal/licenses): it prints each module with its licence, and fails on
# a missing, unrecognised or disallowed one.
licenses: build
	$(GO) run ./internal/cmd/licenses -binary bin/meshd

test: lint licenses unit kernel fuzz bench-quick

# The kernel suite: meshd's production path (kernel WireGuard links, the
# gateway's user link, wg-quick laptops) inside scripts/vm, a qemu VM on
# Debian's kernel with its wireguard module. The netlinkx tests, then the
# end-to-end tests below with MESHD_E2E_WIREGUARD=kernel: every link must be
# a kernel wireguard link and no userspace device process may exist. The
# binaries are built here (the VM's root is the host's, read-only).
KERNEL_TESTS ?= ^(TestMesh|TestSurvivesConsul|TestGateway|TestGatewayJIT|TestMixedFleet)$$
kernel: deps consul promtool
	mkdir -p .cache/vm/bin
	$(GO) build -race -o .cache/vm/bin/meshd ./cmd/meshd
	$(GO) test -c -race -o .cache/vm/bin/netlinkx.test ./netlinkx
	$(GO) test -c -race -o .cache/vm/bin/e2e.test ./e2e
	MESHD_CONSUL_BIN=$$(scripts/consul-bin) MESHD_E2E_MESHD=$(CURDIR)/.cache/vm/bin/meshd MESHD_E2E_WIREGUARD=kernel \
	  scripts/vm --timeout 2400 -- bash -c 'cd netlinkx && ../.cache/vm/bin/netlinkx.test -test.v -test.count=1 -test.timeout 5m && \
	    cd ../e2e && ../.cache/vm/bin/e2e.test -test.v -test.count=1 -test.timeout 35m -test.run "$(KERNEL_TESTS)"'

# Convergence of meshd against the classic approach (consul-template + wg
# syncconf) and the floor (a bare blocking query), in one run: writes
# BENCHMARKS.md and benchmarks-cdf.png; then the host's cost per change and
# the fleet simulation. About 110 minutes on 2 cores.
BENCH_FLAGS ?= -sizes 1000,5000,10000 -events 32 -hosts 2 -idle 10m
# The host's CPU per change (meshd and its agent), without the floor and
# classic (the floor's whole-list query would count in the agent's CPU):
# a second TestBench run, whose costs TestFleet adds up fleet-wide.
HOST_COST_FLAGS ?= -sizes 1000,5000,10000,25000 -events 60 -pace 1s -hosts 2 -idle 10s -classic=false -floor=false -full-read-interval 10m -missed-sizes 10000 -cost-rounds 4
# The servers' side of a fleet (bench/fleet_test.go): W simulated hosts
# asking one server what meshd asks per change, beside hosts reading the
# whole list per change; fleet-wide figures use TestBench's host costs.
FLEET_FLAGS ?= -fleet-nodes 10000 -fleet-watchers 1000,5000,10000 -fleet-changes 30
bench: deps consul
	@scripts/consul-template-bin >/dev/null
	mkdir -p out
	cd bench && MESHD_CONSUL_BIN=$$(../scripts/consul-bin) $(GO) test -count=1 -run '^TestBench$$' -timeout 85m -v . \
		-args $(BENCH_FLAGS) -out ../BENCHMARKS.md -plot ../benchmarks-cdf.png
	cd bench && MESHD_CONSUL_BIN=$$(../scripts/consul-bin) $(GO) test -count=1 -run '^TestBench$$' -timeout 120m -v . \
		-args $(HOST_COST_FLAGS) -out-section ../out/host-cost.md -host-cost-out ../out/host-cost.json
	cd bench && MESHD_CONSUL_BIN=$$(../scripts/consul-bin) $(GO) test -count=1 -run '^TestFleet$$' -timeout 60m -v . \
		-args $(FLEET_FLAGS) -fleet-host-cost ../out/host-cost.json -fleet-out ../out/fleet.md
	{ echo; cat out/host-cost.md; echo; cat out/fleet.md; } >> BENCHMARKS.md
	{ echo; echo '## Go benchmarks (same make bench)'; echo; \
	  echo 'One changed mesh peer written to a device holding N (`netlinkx`), and one new user peer'; \
	  echo 'applied by a gateway holding N (`gateway`, incremental and full reconcile); real userspace'; \
	  echo 'devices in a network namespace of their own. Then the planning cost of trust (`peers`):'; \
	  echo 'a first plan of 10,000 entries, each parsed and, when signed, verified (two ed25519'; \
	  echo 'verifications, spread over the CPUs), and one changed entry planned incrementally.'; \
	  echo 'Then a health response of 10,000 instances decoded as it is read (`catalogsync`): a first'; \
	  echo 'read, and the same response again (B/op: the response is never held whole). Last, the'; \
	  echo 'signatures of 256 entries verified in one batch (`trust`), the shared authority key as one'; \
	  echo 'term, beside ed25519consensus'"'"'s batch.'; echo; echo '```'; \
	  $(GO) test -run '^$$' -bench 'BenchmarkApplyOneChanged|BenchmarkApplyOnePeer' -benchtime 50x ./netlinkx ./gateway \
	    | grep -E '^(Benchmark|goos|goarch|cpu|ok)'; \
	  $(GO) test -run '^$$' -bench 'BenchmarkInitialPlan|BenchmarkChangedEntry' -benchtime 20x ./peers \
	    | grep -E '^(Benchmark|ok)'; \
	  $(GO) test -run '^$$' -bench 'BenchmarkHTTPDecode' -benchtime 20x ./catalogsync \
	    | grep -E '^(Benchmark|ok)'; \
	  $(GO) test -run '^$$' -bench 'BenchmarkBatch' -benchtime 100x ./trust \
	    | grep -E '^(Benchmark|ok)'; \
	  echo '```'; } >> BENCHMARKS.md
	$(MAKE) --no-print-directory bench-kernel >> BENCHMARKS.md
	$(MAKE) --no-print-directory bench-gateway >> BENCHMARKS.md

# The just-in-time gateway at scale (e2e TestGatewayScale, which make test
# runs small): GATEWAY_RECORDS records, GATEWAY_LAPTOPS real wg-quick
# laptops per phase, a flood of GATEWAY_FLOOD initiations a second; meshd
# built without the race detector, as shipped. Prints a BENCHMARKS.md
# section.
GATEWAY_RECORDS ?= 100000
GATEWAY_LAPTOPS ?= 30
GATEWAY_FLOOD   ?= 10000
bench-gateway: deps consul
	@mkdir -p .cache/bench
	@$(GO) build -o .cache/bench/meshd ./cmd/meshd
	@MESHD_CONSUL_BIN=$$(scripts/consul-bin) MESHD_E2E_MESHD=$(CURDIR)/.cache/bench/meshd \
	  MESHD_BENCH_RECORDS=$(GATEWAY_RECORDS) MESHD_BENCH_LAPTOPS=$(GATEWAY_LAPTOPS) MESHD_BENCH_FLOOD=$(GATEWAY_FLOOD) \
	  MESHD_BENCH_REPORT=$(CURDIR)/.cache/bench/gateway.md \
	  $(GO) test -count=1 -run '^TestGatewayScale$$' -timeout 30m ./e2e > .cache/bench/gateway.out 2>&1 || { tail -50 .cache/bench/gateway.out >&2; exit 1; }
	@echo; echo '## Just-in-time gateway at scale (make bench-gateway, same make bench)'; echo; \
	  echo 'One gateway, its records written into Consul KV, real wg-quick laptops (one namespace and'; \
	  echo 'device each) created and brought up one after another with few records, with all of them,'; \
	  echo 'and during a flood of initiations from keys without records (real ones, from wireguard-go;'; \
	  echo '20 source addresses). CPU and RSS are those of the gateway host'"'"'s meshd and its userspace'; \
	  echo 'WireGuard devices (/proc); bytes read per create are their rchar (Consul and UAPI reads).'; echo; \
	  cat .cache/bench/gateway.md

# Kernel WireGuard beside userspace, in one VM (scripts/vm, TCG: both run
# slower than on the host, so the ratio is the figure): one changed peer,
# one new user peer on the gateway, and a fresh host's first apply of
# 10,000 peers with their routes. Prints a BENCHMARKS.md section. Under
# emulation an initial sync of 10,000 peers runs for minutes (every new
# peer costs a Diffie-Hellman computation, in the kernel and in
# wireguard-go alike), so it runs once, and the gateway's stops at 1,000
# user peers.
bench-kernel: deps
	@mkdir -p .cache/vm/bin
	@$(GO) test -c -o .cache/vm/bin/netlinkx.bench ./netlinkx
	@$(GO) test -c -o .cache/vm/bin/gateway.bench ./gateway
	@echo; echo '## Kernel WireGuard beside userspace (same make bench, inside scripts/vm)'; echo; \
	  echo "Debian's kernel under qemu TCG on this machine, both modes in one VM: the kernel/userspace"; \
	  echo 'ratio is the figure (emulation slows both). `mode=` names the backend.'; echo; echo '```'
	@scripts/vm --timeout 2400 -- bash -c 'uname -r; cd netlinkx && ../.cache/vm/bin/netlinkx.bench -test.run "^$$" \
	    -test.bench "BenchmarkApplyOneChanged" -test.benchtime 50x && \
	  ../.cache/vm/bin/netlinkx.bench -test.run "^$$" -test.bench "BenchmarkInitialSync" -test.benchtime 1x && \
	  cd ../gateway && ../.cache/vm/bin/gateway.bench -test.run "^$$" -test.bench "BenchmarkApplyOnePeer/.*/incremental/peers=(100|1000)$$" -test.benchtime 50x' \
	  > .cache/vm/bench.out 2>&1 || { cat .cache/vm/bench.out >&2; exit 1; }
	@grep -E '^(Benchmark|goos|goarch|cpu|[0-9]+\.[0-9]+\.[0-9]+-)' .cache/vm/bench.out
	@echo '```'

# The same at small sizes, under 2 minutes: CI runs it as part of make test;
# its report goes to out/.
bench-quick: deps consul
	@scripts/consul-template-bin >/dev/null
	mkdir -p out
	cd bench && MESHD_CONSUL_BIN=$$(../scripts/consul-bin) $(GO) test -count=1 -run '^TestBench$$' -timeout 10m -v . \
		-args -sizes 100,300 -events 8 -hosts 2 -idle 10s -out ../out/BENCHMARKS.quick.md -plot ../out/benchmarks-quick-cdf.png \
		-missed-stop 5s -out-section ../out/host-cost.quick.md -host-cost-out ../out/host-cost.quick.json
	cd bench && MESHD_CONSUL_BIN=$$(../scripts/consul-bin) $(GO) test -count=1 -run '^TestFleet$$' -timeout 10m -v . \
		-args -fleet-nodes 300 -fleet-watchers 20,100 -fleet-changes 3 -fleet-list-watchers 3 -fleet-list-changes 2 \
		-fleet-host-cost ../out/host-cost.quick.json -fleet-out ../out/fleet.quick.md

# KERNEL=1: the same demo inside scripts/vm, on Debian's kernel with its
# wireguard module (every link a kernel link, or the demo fails).
KERNEL ?=
demo: deps consul build
ifeq ($(KERNEL),1)
	MESHD_DEMO_WIREGUARD=kernel scripts/vm --timeout 900 -- scripts/demo
else
	scripts/demo
endif

# out/meshd_<version>_amd64.deb: a static, stripped binary, the hardened
# unit, the default config as a conffile, the example config, the copyright
# file of every linked module (the licence check writes it), the changelog
# and lintian overrides. The binary's symbols and DWARF are kept beside the
# package in out/meshd_<version>_amd64.debug (the stripped binary names it in
# its .gnu_debuglink: gdb finds it there).
package: deps
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-X main.version=$(PKG_VERSION)" -o bin/meshd-static.full ./cmd/meshd
	mkdir -p out/pkg
	objcopy --only-keep-debug bin/meshd-static.full out/meshd_$(PKG_VERSION)_amd64.debug
	objcopy --strip-all --add-gnu-debuglink=out/meshd_$(PKG_VERSION)_amd64.debug bin/meshd-static.full bin/meshd-static
	$(GO) run ./internal/cmd/licenses -binary bin/meshd-static -copyright out/pkg/copyright -contact "$(MAINTAINER)" >/dev/null
	scripts/debian-changelog "$(PKG_VERSION)" "$(MAINTAINER)" | gzip -9n > out/pkg/changelog.gz
	rm -rf out/pkg/man out/pkg/completions && mkdir -p out/pkg/man out/pkg/completions
	bin/meshd-static man --dir out/pkg/man && gzip -9n out/pkg/man/*.1
	bin/meshd-static completion bash > out/pkg/completions/meshd
	bin/meshd-static completion zsh > out/pkg/completions/_meshd
	bin/meshd-static completion fish > out/pkg/completions/meshd.fish
	MESHD_PKG_VERSION=$(PKG_VERSION) MESHD_MAINTAINER="$(MAINTAINER)" .bin/nfpm package --config packaging/nfpm.yaml --packager deb --target out/
	MESHD_PKG_VERSION=$(PKG_VERSION) MESHD_MAINTAINER="$(MAINTAINER)" .bin/nfpm package --config packaging/nfpm.yaml --packager rpm --target out/

clean:
	rm -rf bin .bin out
