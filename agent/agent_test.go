package agent_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"golang.org/x/time/rate"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/agent"
	"meshd.dev/meshd/catalogsync"
	"meshd.dev/meshd/internal/testlab"
	"meshd.dev/meshd/internal/trusttest"
	"meshd.dev/meshd/netlinkx"
	"meshd.dev/meshd/peers"
	"meshd.dev/meshd/trust"
)

func TestMain(m *testing.M) { testlab.Main(m) }

func remote(t *testing.T, n byte) catalogsync.Registration {
	t.Helper()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	r := catalogsync.Registration{
		Service:   "meshd",
		Node:      fmt.Sprintf("r%d", n),
		PublicKey: k.PublicKey(),
		Endpoint:  netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 0, n}), 51820),
		Prefix:    netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0xaa, 0, 0, 0, n}), 48),
		Serial:    catalogsync.NewSerial(0),
	}
	r.Signer = trusttest.Signer(t, r.Node, r.Prefix)
	return r
}

type harness struct {
	a      *agent.Agent
	link   *netlinkx.Link
	consul *api.Client
	self   catalogsync.Registration
	stop   func() error
}

type options struct {
	grace    time.Duration
	snapshot string
	serials  string
	key      *wgtypes.Key
	// hints is the hint event (none if empty); limiter spaces the watch.
	hints    string
	limiter  *rate.Limiter
	maxPeers int
}

// start runs an agent with a real userspace device named iface against c.
func start(t *testing.T, c *api.Client, iface string, grace time.Duration) *harness {
	t.Helper()
	return startWith(t, c, iface, options{grace: grace})
}

func startWith(t *testing.T, c *api.Client, iface string, o options) *harness {
	t.Helper()
	key, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	if o.key != nil {
		key = *o.key
	}
	prefix := netip.MustParsePrefix("fdaa:0:1::/48")
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	link := testlab.OpenLink(t, netlinkx.Options{
		Name: iface, MTU: 1420, ListenPort: 51820, PrivateKey: key, Address: prefix.Addr().Next(), Logger: logger,
	})
	self := catalogsync.Registration{Service: "meshd", Node: "self", PublicKey: key.PublicKey(),
		Endpoint: netip.MustParseAddrPort("198.18.0.1:51820"), Prefix: prefix,
		Signer: trusttest.Signer(t, "self", prefix), Serial: catalogsync.NewSerial(0)}
	a := agent.New(agent.Options{
		Registration: self, Prefix: prefix, ListenPort: 51820,
		Rules:        peers.Rules{Supernet: netip.MustParsePrefix("fdaa::/16"), Trust: trusttest.Trust()},
		RemovalGrace: o.grace, ResyncInterval: time.Second,
		MaxRemovalFraction: 0.5, BreakerFloor: 3, SnapshotPath: o.snapshot, MemoryPath: o.serials, MaxPeers: o.maxPeers,
		Link: link, Logger: logger,
		Catalog: &catalogsync.Catalog{Client: c, Service: "meshd", HintKey: o.hints, Limiter: o.limiter, Logger: logger},
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	h := &harness{a: a, link: link, consul: c, self: self}
	var stopped bool
	var runErr error
	h.stop = func() error {
		if !stopped {
			cancel()
			runErr, stopped = <-done, true
		}
		return runErr
	}
	t.Cleanup(func() { h.stop() }) // runs before OpenLink's removal
	return h
}

func (h *harness) kernelPeers(t *testing.T) map[wgtypes.Key]bool {
	t.Helper()
	// Read the device on its own: the agent's Link belongs to its loop.
	dev, err := netlinkx.ReadDevice(h.link.Name())
	if err != nil {
		return nil
	}
	m := map[wgtypes.Key]bool{}
	for _, p := range dev.Peers {
		m[p.PublicKey] = true
	}
	return m
}

func (h *harness) peerState(key wgtypes.Key) string {
	for _, p := range h.a.Status().Peers {
		if p.PublicKey == key.String() {
			return p.State
		}
	}
	return ""
}

// withRemotes starts a dev Consul holding the remote nodes ns.
func withRemotes(t *testing.T, ns ...byte) (*api.Client, []catalogsync.Registration) {
	t.Helper()
	testlab.RequireRoot(t)
	c := testlab.StartDevConsul(t).Client(t)
	var rs []catalogsync.Registration
	for _, n := range ns {
		r := remote(t, n)
		if err := catalogsync.Register(context.Background(), c, r); err != nil {
			t.Fatal(err)
		}
		rs = append(rs, r)
	}
	return c, rs
}

func TestRemovalGrace(t *testing.T) {
	c, rs := withRemotes(t, 2, 3)
	r2, r3 := rs[0], rs[1]
	ctx := context.Background()
	h := start(t, c, "wga0", 3*time.Second)
	testlab.Eventually(t, 20*time.Second, "both remote peers applied", func() bool {
		k := h.kernelPeers(t)
		return k[r2.PublicKey] && k[r3.PublicKey] && h.peerState(r2.PublicKey) == agent.PeerApplied
	})
	testlab.Eventually(t, 20*time.Second, "own registration in the catalog", func() bool {
		entries, _, err := c.Health().Service("meshd", "", false, nil)
		return err == nil && len(entries) == 3
	})
	// Past the 10s re-registration limit, a registered agent has written
	// the catalog once: its own entry matches and needs no rewrite.
	time.Sleep(11 * time.Second)
	if n := h.a.Status().Registrations; n != 1 {
		t.Errorf("%d registrations in steady state, want 1", n)
	}

	t.Run("deregistered and back within the grace: no kernel change", func(t *testing.T) {
		before := h.link.Writes()
		if err := catalogsync.Deregister(ctx, c, r3.Node); err != nil {
			t.Fatal(err)
		}
		testlab.Eventually(t, 10*time.Second, "r3 held", func() bool { return h.peerState(r3.PublicKey) == agent.PeerHeld })
		if err := catalogsync.Register(ctx, c, r3); err != nil {
			t.Fatal(err)
		}
		testlab.Eventually(t, 10*time.Second, "r3 applied again", func() bool { return h.peerState(r3.PublicKey) == agent.PeerApplied })
		if n := h.link.Writes() - before; n != 0 {
			t.Errorf("%d kernel writes for a node that came back within its grace, want 0", n)
		}
	})

	t.Run("deregistered for good: kept for the grace, then removed", func(t *testing.T) {
		gone := time.Now()
		if err := catalogsync.Deregister(ctx, c, r3.Node); err != nil {
			t.Fatal(err)
		}
		testlab.Eventually(t, 10*time.Second, "r3 held", func() bool { return h.peerState(r3.PublicKey) == agent.PeerHeld })
		if !h.kernelPeers(t)[r3.PublicKey] {
			t.Fatal("r3 left the kernel before its grace ended")
		}
		testlab.Eventually(t, 15*time.Second, "r3 removed", func() bool { return !h.kernelPeers(t)[r3.PublicKey] })
		if waited := time.Since(gone); waited < 3*time.Second {
			t.Errorf("r3 removed %s after deregistration, before its 3s grace", waited)
		}
		if !h.kernelPeers(t)[r2.PublicKey] {
			t.Error("r2 was removed too")
		}
	})

	t.Run("a node whose health is critical is kept", func(t *testing.T) {
		r4 := remote(t, 4)
		reg := &api.CatalogRegistration{
			Node: "r4-node", Address: "198.18.0.4",
			Service: &api.AgentService{ID: r4.ID(), Service: "meshd", Meta: r4.Meta()},
			Check: &api.AgentCheck{Node: "r4-node", CheckID: "serfHealth", Name: "Serf Health Status",
				Status: api.HealthPassing},
		}
		if _, err := c.Catalog().Register(reg, nil); err != nil {
			t.Fatal(err)
		}
		// Applied in status, not only present in the kernel: status is set
		// after the whole plan (peer, then route) is written and counted.
		testlab.Eventually(t, 10*time.Second, "r4 applied", func() bool {
			return h.kernelPeers(t)[r4.PublicKey] && h.peerState(r4.PublicKey) == agent.PeerApplied
		})
		before := h.link.Writes()
		reg.Check.Status = api.HealthCritical
		if _, err := c.Catalog().Register(reg, nil); err != nil {
			t.Fatal(err)
		}
		testlab.Eventually(t, 10*time.Second, "r4 shown critical", func() bool {
			for _, p := range h.a.Status().Peers {
				if p.Node == r4.Node {
					return p.Health == api.HealthCritical && p.State == agent.PeerApplied
				}
			}
			return false
		})
		time.Sleep(2 * time.Second) // a few resyncs
		if !h.kernelPeers(t)[r4.PublicKey] || h.link.Writes() != before {
			t.Errorf("critical health changed the kernel: peer present %v, %d writes", h.kernelPeers(t)[r4.PublicKey], h.link.Writes()-before)
		}
	})

	t.Run("own registration restored when lost", func(t *testing.T) {
		if err := catalogsync.Deregister(ctx, c, "self"); err != nil {
			t.Fatal(err)
		}
		testlab.Eventually(t, 30*time.Second, "self registered again", func() bool {
			svcs, err := c.Agent().Services()
			_, ok := svcs[h.self.ID()]
			return err == nil && ok
		})
	})

	t.Run("stop leaves the kernel as it is", func(t *testing.T) {
		if err := h.stop(); err != nil {
			t.Fatalf("Run returned %v on stop, want nil", err)
		}
		if !h.kernelPeers(t)[r2.PublicKey] {
			t.Error("stopping removed a peer")
		}
		svcs, err := c.Agent().Services()
		if _, ok := svcs[h.self.ID()]; err != nil || !ok {
			t.Errorf("stopping deregistered the node (err %v)", err)
		}
	})
}

// TestStartsWithoutConsul: with no Consul at all, the agent still brings
// the link up, keeps running, and says the catalog is unreachable.
func TestStartsWithoutConsul(t *testing.T) {
	testlab.RequireRoot(t)
	cfg := api.DefaultConfig()
	cfg.Address = "127.0.0.1:1" // nothing listens on port 1
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h := start(t, c, "wga1", time.Minute)
	testlab.Eventually(t, 20*time.Second, "link up and catalog reported unreachable", func() bool {
		st := h.a.Status()
		_, devErr := netlinkx.ReadDevice(h.link.Name())
		return devErr == nil && !st.Catalog.Reachable && st.Catalog.LastError != "" && !st.LastReconcile.IsZero()
	})
	if st := h.a.Status(); st.Converged {
		t.Error("status says converged without ever reading the catalog")
	}
	if err := h.stop(); err != nil {
		t.Errorf("Run: %v", err)
	}
}

func TestLeave(t *testing.T) {
	testlab.RequireRoot(t)
	consul := testlab.StartDevConsul(t)
	c := consul.Client(t)
	h := start(t, c, "wga2", time.Minute)
	testlab.Eventually(t, 20*time.Second, "registered", func() bool {
		svcs, err := c.Agent().Services()
		_, ok := svcs[h.self.ID()]
		return err == nil && ok
	})
	if err := h.a.Leave(context.Background()); err != nil {
		t.Fatalf("Leave: %v", err)
	}
	if err := h.stop(); !errors.Is(err, agent.ErrLeft) {
		t.Errorf("Run after Leave returned %v, want ErrLeft", err)
	}
	if _, err := netlinkx.ReadDevice(h.link.Name()); err == nil {
		t.Error("the link still exists after Leave")
	}
	svcs, err := c.Agent().Services()
	if _, ok := svcs[h.self.ID()]; err != nil || ok {
		t.Errorf("still registered after Leave (err %v)", err)
	}
}

// TestCircuitBreaker removes 80% of the catalog in one step: no peer may
// leave the kernel until an operator releases them, and then they go.
func TestCircuitBreaker(t *testing.T) {
	c, remotes := withRemotes(t, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)
	ctx := context.Background()
	h := start(t, c, "wga3", time.Second)
	testlab.Eventually(t, 20*time.Second, "10 peers applied", func() bool { return len(h.kernelPeers(t)) == 10 })

	for _, r := range remotes[:8] {
		if err := catalogsync.Deregister(ctx, c, r.Node); err != nil {
			t.Fatal(err)
		}
	}
	testlab.Eventually(t, 20*time.Second, "the breaker holds 8 removals past their grace", func() bool {
		b := h.a.Status().Breaker
		return b.Tripped && b.Held == 8
	})
	// Several more reconciles (resync is 1s): still nothing removed.
	time.Sleep(3 * time.Second)
	if n := len(h.kernelPeers(t)); n != 10 {
		t.Fatalf("%d peers in the kernel while the breaker holds, want 10", n)
	}
	st := h.a.Status()
	if st.Converged {
		t.Error("status says converged while removals are held")
	}
	held := 0
	for _, p := range st.Peers {
		if p.State == agent.PeerHeld && strings.Contains(p.Reason, "circuit breaker") {
			held++
		}
	}
	if held != 8 {
		t.Errorf("status lists %d peers held by the breaker, want 8", held)
	}

	n, err := h.a.ReleaseRemovals(ctx)
	if err != nil || n != 8 {
		t.Fatalf("ReleaseRemovals = %d, %v; want 8", n, err)
	}
	testlab.Eventually(t, 20*time.Second, "released peers removed", func() bool { return len(h.kernelPeers(t)) == 2 })
	for _, r := range remotes[8:] {
		if !h.kernelPeers(t)[r.PublicKey] {
			t.Errorf("remaining peer %s was removed", r.Node)
		}
	}
	testlab.Eventually(t, 10*time.Second, "breaker clear and converged", func() bool {
		st := h.a.Status()
		return !st.Breaker.Tripped && st.Converged
	})
}

// TestBootFromSnapshot: a host restarts (its link gone, as after a reboot)
// while Consul is unreachable; the saved snapshot alone brings its peers
// back.
func TestBootFromSnapshot(t *testing.T) {
	c, rs := withRemotes(t, 2, 3)
	r2, r3 := rs[0], rs[1]
	snap := filepath.Join(t.TempDir(), "catalog.json")
	key, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	h := startWith(t, c, "wga4", options{grace: time.Minute, snapshot: snap, key: &key})
	testlab.Eventually(t, 20*time.Second, "peers applied and snapshot saved", func() bool {
		_, err := os.Stat(snap)
		return len(h.kernelPeers(t)) == 2 && err == nil
	})
	h.stop()
	if err := h.link.Remove(); err != nil {
		t.Fatal(err)
	}

	down := api.DefaultConfig()
	down.Address = "127.0.0.1:1"
	dc, err := api.NewClient(down)
	if err != nil {
		t.Fatal(err)
	}
	h2 := startWith(t, dc, "wga4", options{grace: time.Minute, snapshot: snap, key: &key})
	testlab.Eventually(t, 20*time.Second, "peers from the snapshot", func() bool {
		k := h2.kernelPeers(t)
		return k[r2.PublicKey] && k[r3.PublicKey]
	})
	st := h2.a.Status()
	if !st.Catalog.SnapshotInUse || st.Catalog.Reachable {
		t.Errorf("catalog status %+v, want the snapshot in use and Consul unreachable", st.Catalog)
	}

	// A corrupt snapshot is reported and ignored, never fatal.
	h2.stop()
	if err := os.WriteFile(snap, []byte(`{"version":1,"entries":[`), 0o600); err != nil {
		t.Fatal(err)
	}
	h3 := startWith(t, dc, "wga4", options{grace: time.Minute, snapshot: snap, key: &key})
	testlab.Eventually(t, 10*time.Second, "agent runs with a corrupt snapshot", func() bool {
		return !h3.a.Status().LastReconcile.IsZero()
	})
	if k := h3.kernelPeers(t); !k[r2.PublicKey] {
		t.Error("a corrupt snapshot made the agent drop peers")
	}
}

// TestRotateKey: the device takes the new key, the catalog shows it, and a
// second later peers that have not handshaken since (here: all, as these
// remotes do not exist) get their sessions reset, keeping their
// configuration.
func TestRotateKey(t *testing.T) {
	c, rs := withRemotes(t, 2, 3)
	h := start(t, c, "wga5", time.Minute)
	testlab.Eventually(t, 20*time.Second, "peers applied", func() bool { return len(h.kernelPeers(t)) == 2 })
	newKey, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	before := h.link.Writes()
	if err := h.a.RotateKey(context.Background(), newKey); err != nil {
		t.Fatal(err)
	}
	dev, err := netlinkx.ReadDevice("wga5")
	if err != nil || dev.PublicKey != newKey.PublicKey() {
		t.Fatalf("device key after RotateKey: %v, %v", dev.PublicKey, err)
	}
	testlab.Eventually(t, 10*time.Second, "catalog shows the new key", func() bool {
		svcs, err := c.Agent().Services()
		s, ok := svcs[h.self.ID()]
		return err == nil && ok && s.Meta["public_key"] == newKey.PublicKey().String()
	})
	testlab.Eventually(t, 10*time.Second, "stale sessions reset a second later", func() bool {
		return h.link.Writes()-before >= 2 // the key, then the reset
	})
	k := h.kernelPeers(t)
	if !k[rs[0].PublicKey] || !k[rs[1].PublicKey] || len(k) != 2 {
		t.Errorf("peers after the reset: %v", k)
	}
	if st := h.a.Status(); st.PublicKey != newKey.PublicKey().String() {
		t.Errorf("status public key %s, want the new one", st.PublicKey)
	}
}

// TestHintAlone shows a hint bringing a change on its own: once the watch
// of the whole list cannot wake for an hour (its rate limiter), a node
// registered, changed and deregistered, each announced by a hint, is added,
// updated and removed in the kernel. Hints that name this node itself, or
// are not hints, change nothing.
func TestHintAlone(t *testing.T) {
	c, rs := withRemotes(t, 2)
	lim := rate.NewLimiter(rate.Inf, 1)
	h := startWith(t, c, "wga7", options{hints: "meshd/hint", limiter: lim})
	testlab.Eventually(t, 20*time.Second, "converged with r2", func() bool {
		st := h.a.Status()
		return st.Converged && len(h.kernelPeers(t)) == 1 && st.Catalog.Entries == 2
	})
	// Freeze the watch: no token for an hour. The query it has in flight
	// still returns once, so an unhinted change goes first.
	lim.SetLimit(rate.Every(time.Hour))
	for lim.Allow() {
	}
	r9 := remote(t, 9)
	ctx := context.Background()
	if err := catalogsync.Register(ctx, c, r9); err != nil {
		t.Fatal(err)
	}
	testlab.Eventually(t, 20*time.Second, "the watch's last delivery (r9)", func() bool { return h.a.Status().Catalog.Entries == 3 })
	reads := h.a.Status().Catalog.Reads

	node, err := c.Agent().NodeName()
	if err != nil {
		t.Fatal(err)
	}
	announce := func(r catalogsync.Registration, gone bool) {
		t.Helper()
		hint := catalogsync.Hint{ConsulNode: node, ServiceID: r.ID()}
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		var err error
		hint.Index, err = catalogsync.WaitInstance(wctx, c, "meshd", hint, func(e *peers.Entry) bool { return (e == nil) == gone && (gone || r.Matches(*e)) })
		if err != nil {
			t.Fatal(err)
		}
		if _, err := catalogsync.WriteHint(ctx, c, "meshd/hint", hint); err != nil {
			t.Fatal(err)
		}
	}
	r3 := remote(t, 3)
	if err := catalogsync.Register(ctx, c, r3); err != nil {
		t.Fatal(err)
	}
	announce(r3, false)
	testlab.Eventually(t, 10*time.Second, "r3 applied through its hint", func() bool { return h.kernelPeers(t)[r3.PublicKey] })

	old := r3.PublicKey
	r3 = remote(t, 3) // a new key
	if err := catalogsync.Register(ctx, c, r3); err != nil {
		t.Fatal(err)
	}
	announce(r3, false)
	testlab.Eventually(t, 10*time.Second, "r3's new key applied through its hint", func() bool {
		k := h.kernelPeers(t)
		return k[r3.PublicKey] && !k[old]
	})

	if err := catalogsync.Deregister(ctx, c, rs[0].Node); err != nil {
		t.Fatal(err)
	}
	// A hint that finds the instance gone removes nothing (anyone may
	// write one naming any instance): r2 goes when the list says so
	// (TestRemovalGrace), and the list is frozen here.
	announce(rs[0], true)
	testlab.Eventually(t, 10*time.Second, "the gone hint read", func() bool { return h.a.Status().Catalog.HintReads >= 3 })
	time.Sleep(time.Second)
	if !h.kernelPeers(t)[rs[0].PublicKey] {
		t.Fatal("r2 removed through a hint that found its instance gone, before the list said so")
	}

	applied := h.a.Status().Catalog.HintsApplied
	// This node's own entry, an index the list has (r9's registration),
	// and a value that is not a hint: none is read.
	for _, hint := range []catalogsync.Hint{
		{ConsulNode: node, ServiceID: h.self.ID(), Index: 1 << 40},
		{ConsulNode: node, ServiceID: r9.ID(), Index: 1},
	} {
		if _, err := catalogsync.WriteHint(ctx, c, "meshd/hint", hint); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := c.KV().Put(&api.KVPair{Key: "meshd/hint", Value: []byte("garbage")}, nil); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	st := h.a.Status()
	if st.Catalog.HintsApplied != applied || st.Catalog.HintReads != 3 || st.Catalog.Hints != 4 {
		t.Errorf("after hints naming this node, an old index and garbage: %d hints, %d read, %d applied; want 4, 3 and %d", st.Catalog.Hints, st.Catalog.HintReads, st.Catalog.HintsApplied, applied)
	}
	if st.Catalog.Reads != reads || st.Catalog.Entries != 4 {
		t.Errorf("the watch read again (%d reads, was %d; %d entries): the test did not freeze it", st.Catalog.Reads, reads, st.Catalog.Entries)
	}
	if k := h.kernelPeers(t); len(k) != 3 || !k[r3.PublicKey] || !k[r9.PublicKey] || !k[rs[0].PublicKey] {
		t.Errorf("kernel peers %v; want r3 (new key), r9 and r2 (no hint removes)", k)
	}

	// Another instance claiming this node's name, brought by a hint alone
	// (a delta): status names it.
	evil := catalogsync.Registration{Service: "meshd", Node: "self", PublicKey: r3.PublicKey, Endpoint: r3.Endpoint, Prefix: r3.Prefix}
	if err := c.Agent().ServiceRegisterOpts(&api.AgentServiceRegistration{ID: "meshd-evil", Name: "meshd", Meta: evil.Meta()},
		api.ServiceRegisterOpts{}.WithContext(ctx)); err != nil {
		t.Fatal(err)
	}
	hint := catalogsync.Hint{ConsulNode: node, ServiceID: "meshd-evil"}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if hint.Index, err = catalogsync.WaitInstance(wctx, c, "meshd", hint, func(e *peers.Entry) bool { return e != nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := catalogsync.WriteHint(ctx, c, "meshd/hint", hint); err != nil {
		t.Fatal(err)
	}
	testlab.Eventually(t, 10*time.Second, "the other instance claiming this node in status", func() bool {
		im := h.a.Status().Impersonation
		return im != nil && slices.Equal(im.Others, []string{"meshd-evil"})
	})
	if st := h.a.Status(); st.Catalog.Reads != reads {
		t.Errorf("the watch read the list (%d reads, was %d): the claim did not come as a delta", st.Catalog.Reads, reads)
	}
}

// TestMaxPeers: with max_peers 2 and three remote nodes in a real Consul,
// the kernel holds the two registered first; the third is listed rejected
// with its reason, and takes the place one of them frees when it leaves.
func TestMaxPeers(t *testing.T) {
	c, rs := withRemotes(t, 2, 3, 4)
	h := startWith(t, c, "wga7", options{grace: time.Second, maxPeers: 2})
	testlab.Eventually(t, 20*time.Second, "the two oldest applied, the third rejected", func() bool {
		k := h.kernelPeers(t)
		return k[rs[0].PublicKey] && k[rs[1].PublicKey] && !k[rs[2].PublicKey] && len(k) == 2 &&
			h.peerState(rs[2].PublicKey) == "" // a rejected entry has no key in status
	})
	var rejected []agent.PeerStatus
	for _, p := range h.a.Status().Peers {
		if p.State == agent.PeerRejected {
			rejected = append(rejected, p)
		}
	}
	if len(rejected) != 1 || rejected[0].Node != rs[2].Node || rejected[0].Code != "max_peers" || !strings.Contains(rejected[0].Reason, "at most 2 peers") {
		t.Fatalf("rejected = %+v, want %s over max_peers", rejected, rs[2].Node)
	}
	if err := catalogsync.Deregister(context.Background(), c, rs[0].Node); err != nil {
		t.Fatal(err)
	}
	testlab.Eventually(t, 20*time.Second, "the third applied in the freed place", func() bool {
		k := h.kernelPeers(t)
		return k[rs[1].PublicKey] && k[rs[2].PublicKey] && !k[rs[0].PublicKey]
	})
}

// TestUntrustedFlood: 1,000 entries in a real Consul under credentials
// of an authority this host does not trust: none becomes a peer, the
// valid peers stay applied, each entry is verified once however often the
// agent plans (resync every second), and status lists them rejected.
func TestUntrustedFlood(t *testing.T) {
	c, rs := withRemotes(t, 2, 3)
	h := start(t, c, "wga8", time.Minute)
	testlab.Eventually(t, 20*time.Second, "the valid peers applied", func() bool {
		k := h.kernelPeers(t)
		return k[rs[0].PublicKey] && k[rs[1].PublicKey]
	})
	stranger, err := trust.AuthorityFromSeed([]byte("a stranger's authority key seed!"))
	if err != nil {
		t.Fatal(err)
	}
	const n = 1000
	var ops api.TxnOps
	flush := func() {
		if len(ops) == 0 {
			return
		}
		ok, resp, _, err := c.Txn().Txn(ops, nil)
		if err != nil || !ok {
			t.Fatalf("register the flood: %v %v", err, resp)
		}
		ops = nil
	}
	for i := range n {
		k, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			t.Fatal(err)
		}
		r := catalogsync.Registration{Service: "meshd", Node: fmt.Sprintf("x%d", i), PublicKey: k.PublicKey(),
			Endpoint: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)}), 51820),
			Prefix:   netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0xaa, 0, 2, byte(i >> 8), byte(i)}), 48),
			Serial:   1}
		r.Signer = trusttest.SignerBy(t, stranger, r.Node, r.Prefix, time.Now().Add(time.Hour))
		ops = append(ops,
			&api.TxnOp{Node: &api.NodeTxnOp{Verb: api.NodeSet, Node: api.Node{Node: r.Node, Address: r.Endpoint.Addr().String()}}},
			&api.TxnOp{Service: &api.ServiceTxnOp{Verb: api.ServiceSet, Node: r.Node, Service: api.AgentService{ID: r.ID(), Service: "meshd", Meta: r.Meta()}}})
		if len(ops) == 64 {
			flush()
		}
	}
	flush()
	untrusted := func() int {
		k := 0
		for _, p := range h.a.Status().Peers {
			if p.State == agent.PeerRejected && p.Code == "untrusted" {
				k++
			}
		}
		return k
	}
	testlab.Eventually(t, 30*time.Second, "the flood listed rejected as untrusted", func() bool { return untrusted() == n })
	parsed := h.a.Status().EntriesParsed
	time.Sleep(3 * time.Second) // three resyncs
	st := h.a.Status()
	if st.EntriesParsed != parsed {
		t.Errorf("%d entries parsed again over three resyncs of an unchanged catalog, want 0", st.EntriesParsed-parsed)
	}
	if parsed > 2*(n+3) {
		t.Errorf("%d entries parsed for a catalog of %d: the flood was verified more than once or twice", parsed, n+3)
	}
	if k := h.kernelPeers(t); len(k) != 2 || !k[rs[0].PublicKey] || !k[rs[1].PublicKey] {
		t.Errorf("kernel peers %v, want the two valid ones only", k)
	}
}

// TestReplayAfterRestart: r2 rotates its key; an attacker then puts r2's
// entry from before the rotation back in the catalog (validly signed, an
// older serial). The agent refuses it, and so does an agent restarted in
// between, from the serials it saved: the kernel keeps r2's new key.
func TestReplayAfterRestart(t *testing.T) {
	c, rs := withRemotes(t, 2)
	dir := t.TempDir()
	o := options{grace: time.Minute, serials: filepath.Join(dir, "planner.json")}
	h := startWith(t, c, "wga9", o)
	r2 := rs[0]
	testlab.Eventually(t, 20*time.Second, "r2 applied", func() bool { return h.kernelPeers(t)[r2.PublicKey] })
	old := r2
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	r2.PublicKey, r2.Serial = k.PublicKey(), catalogsync.NewSerial(old.Serial)
	ctx := context.Background()
	if err := catalogsync.Register(ctx, c, r2); err != nil {
		t.Fatal(err)
	}
	testlab.Eventually(t, 20*time.Second, "r2's new key applied", func() bool {
		kp := h.kernelPeers(t)
		return kp[r2.PublicKey] && !kp[old.PublicKey]
	})
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
	key := h.link.PrivateKey()
	h = startWith(t, c, "wga9", options{grace: time.Minute, serials: o.serials, key: &key})
	if err := catalogsync.Register(ctx, c, old); err != nil { // the replay
		t.Fatal(err)
	}
	testlab.Eventually(t, 20*time.Second, "the replay refused by the restarted agent", func() bool {
		for _, p := range h.a.Status().Peers {
			if p.ServiceID == r2.ID() && p.State == agent.PeerRejected && p.Code == peers.CodeReplay {
				return true
			}
		}
		return false
	})
	time.Sleep(2 * time.Second) // resyncs
	if kp := h.kernelPeers(t); !kp[r2.PublicKey] || kp[old.PublicKey] {
		t.Errorf("kernel peers after the replay: %v; want r2's new key only", kp)
	}
}

// TestSlowFirstReadRegistersOnce: while the first read of the catalog has
// not come (a catalog of thousands takes seconds, here the watch's rate
// limiter holds it back), nothing says this node's entry is missing: the
// node registers once, not again each second (each time taking its entry
// out and putting it back, newest, for the whole fleet to see).
func TestSlowFirstReadRegistersOnce(t *testing.T) {
	c, _ := withRemotes(t, 2)
	lim := rate.NewLimiter(rate.Every(2500*time.Millisecond), 1)
	lim.Allow() // the first read waits for the next token
	h := startWith(t, c, "wga9", options{limiter: lim})
	testlab.Eventually(t, 30*time.Second, "converged with r2", func() bool {
		st := h.a.Status()
		return st.Converged && len(h.kernelPeers(t)) == 1
	})
	if n := h.a.Status().Registrations; n != 1 {
		t.Errorf("registered %d times, want once", n)
	}
}

// TestReadInFlightRegistersOnce: a list read sent before this node's
// registration and answered well after it lacks the node's entry, and
// says nothing about whether the entry is gone: the node registers once.
// (A transport holds the read's answer back: nothing else makes the
// catalog answer a read late on demand.)
func TestReadInFlightRegistersOnce(t *testing.T) {
	testlab.RequireRoot(t)
	srv := testlab.StartDevConsul(t)
	r2 := remote(t, 2)
	if err := catalogsync.Register(context.Background(), srv.Client(t), r2); err != nil {
		t.Fatal(err)
	}
	held := &heldRead{next: http.DefaultTransport, answered: make(chan struct{}), registered: make(chan struct{})}
	c, err := api.NewClient(&api.Config{Address: srv.HTTPAddr, Token: srv.Token, HttpClient: &http.Client{Transport: held}})
	if err != nil {
		t.Fatal(err)
	}
	h := startWith(t, c, "wgaa", options{})
	testlab.Eventually(t, 30*time.Second, "converged with r2", func() bool {
		st := h.a.Status()
		return st.Converged && len(h.kernelPeers(t)) == 1
	})
	if !held.held.Load() {
		t.Fatal("the first list read was not held back")
	}
	time.Sleep(2 * time.Second) // past the old 1 s wait before registering again
	if n := h.a.Status().Registrations; n != 1 {
		t.Errorf("registered %d times, want once", n)
	}
}

// heldRead lets the first list read of the service reach Consul, makes the
// node's first registration wait for its answer, then hands the answer
// (without the node) to the watch 1.5 s after the registration.
type heldRead struct {
	next                 http.RoundTripper
	answered, registered chan struct{}
	listed, reg, held    atomic.Bool
}

func (h *heldRead) RoundTrip(req *http.Request) (*http.Response, error) {
	switch {
	case req.Method == http.MethodGet && req.URL.Path == "/v1/health/service/meshd" && !h.listed.Swap(true):
		resp, err := h.next.RoundTrip(req)
		close(h.answered)
		<-h.registered
		time.Sleep(1500 * time.Millisecond)
		h.held.Store(true)
		return resp, err
	case req.Method == http.MethodPut && req.URL.Path == "/v1/agent/service/register" && !h.reg.Swap(true):
		<-h.answered
		defer close(h.registered)
		return h.next.RoundTrip(req)
	}
	return h.next.RoundTrip(req)
}
