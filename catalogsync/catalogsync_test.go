package catalogsync_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/consul/api"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/catalogsync"
	"meshd.dev/meshd/internal/testlab"
	"meshd.dev/meshd/peers"
)

func TestNextIndex(t *testing.T) {
	tests := []struct {
		prev, got, want uint64
	}{
		{0, 10, 10},  // first read
		{10, 12, 12}, // moved on
		{10, 10, 10}, // timed out unchanged
		{10, 5, 0},   // went backwards (servers restored/reset): full read
		{0, 0, 1},    // never block on 0
		{10, 0, 0},   // backwards to 0
	}
	for _, tt := range tests {
		if got := catalogsync.NextIndex(tt.prev, tt.got); got != tt.want {
			t.Errorf("NextIndex(%d, %d) = %d, want %d", tt.prev, tt.got, got, tt.want)
		}
	}
}

func registration(t *testing.T, node string, n byte) catalogsync.Registration {
	t.Helper()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return catalogsync.Registration{
		Service:   "meshd",
		Node:      node,
		PublicKey: k.PublicKey(),
		Endpoint:  netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 0, n}), 51820),
		Prefix:    netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0xaa, 0, 0, 0, n}), 48),
		Keepalive: 25 * time.Second,
	}
}

// watch runs a Watcher in the background and returns its snapshots.
func watch(t *testing.T, c *api.Client, h ...*catalogsync.HTTP) (*catalogsync.Watcher, <-chan catalogsync.Snapshot, func()) {
	t.Helper()
	w := &catalogsync.Watcher{Client: c, Service: "meshd", MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}
	if len(h) > 0 {
		w.HTTP = h[0]
	}
	ch := make(chan catalogsync.Snapshot, 100)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx, func(s catalogsync.Snapshot) { ch <- s }) }()
	stop := func() {
		cancel()
		select {
		case err := <-done:
			if err != context.Canceled {
				t.Errorf("Run returned %v, want context.Canceled", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run did not return within 5s of cancellation")
		}
	}
	t.Cleanup(stop)
	return w, ch, stop
}

// next waits for a snapshot satisfying ok.
func next(t *testing.T, ch <-chan catalogsync.Snapshot, what string, ok func(catalogsync.Snapshot) bool) catalogsync.Snapshot {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case s := <-ch:
			if ok(s) {
				return s
			}
		case <-timeout:
			t.Fatalf("no snapshot with %s within 20s", what)
		}
	}
}

func ids(s catalogsync.Snapshot) map[string]peers.Entry {
	m := map[string]peers.Entry{}
	for _, e := range s.Entries {
		m[e.ServiceID] = e
	}
	return m
}

// clients returns an API client of consul and a raw reader through the
// same configuration.
func clients(t *testing.T, consul *testlab.Consul) (*api.Client, *catalogsync.HTTP) {
	t.Helper()
	cfg := api.DefaultConfig()
	cfg.Address = consul.HTTPAddr
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c, catalogsync.NewHTTP(cfg)
}

// TestRegisterAndWatch runs the watch through the API client and through
// the raw reader meshd run uses.
func TestRegisterAndWatch(t *testing.T) {
	for _, raw := range []bool{false, true} {
		t.Run(map[bool]string{false: "api", true: "raw"}[raw], func(t *testing.T) {
			consul := testlab.StartDevConsul(t)
			c, h := clients(t, consul)
			if !raw {
				h = nil
			}
			testRegisterAndWatch(t, c, h)
		})
	}
}

func testRegisterAndWatch(t *testing.T, c *api.Client, h *catalogsync.HTTP) {
	ctx := context.Background()
	var w *catalogsync.Watcher
	var ch <-chan catalogsync.Snapshot
	if h != nil {
		w, ch, _ = watch(t, c, h)
	} else {
		w, ch, _ = watch(t, c)
	}
	first := next(t, ch, "the empty catalog", func(s catalogsync.Snapshot) bool { return true })
	if len(first.Entries) != 0 {
		t.Fatalf("first snapshot has %d entries, want 0", len(first.Entries))
	}

	h2 := registration(t, "h2", 2)
	if err := catalogsync.Register(ctx, c, h2); err != nil {
		t.Fatal(err)
	}
	s := next(t, ch, "h2", func(s catalogsync.Snapshot) bool { _, ok := ids(s)["meshd-h2"]; return ok })
	e := ids(s)["meshd-h2"]
	if !h2.Matches(e) {
		t.Errorf("catalog entry %+v does not match registration meta %v", e, h2.Meta())
	}
	if e.Health != peers.HealthPassing {
		t.Errorf("health = %q, want passing", e.Health)
	}
	p, err := peers.ParseEntry(e, peers.Rules{Supernet: netip.MustParsePrefix("fdaa::/16")})
	if err != nil {
		t.Fatalf("registered entry does not parse: %v", err)
	}
	if p.PublicKey != h2.PublicKey || p.Endpoint != h2.Endpoint || p.Prefix != h2.Prefix || p.Keepalive != h2.Keepalive {
		t.Errorf("parsed %+v, want the registered values %+v", p, h2)
	}

	// A catalog write that changes nothing meshd reads (the port field)
	// wakes the watch but delivers nothing.
	before := w.State()
	reg := &api.AgentServiceRegistration{ID: h2.ID(), Name: "meshd", Meta: h2.Meta(), Address: "198.18.0.2", Port: 1}
	if err := c.Agent().ServiceRegister(reg); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for w.State().Reads == before.Reads {
		if time.Now().After(deadline) {
			t.Fatal("the watch did not wake on a catalog write")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st := w.State(); st.Delivered != before.Delivered {
		t.Errorf("a write with unchanged content delivered a snapshot (delivered %d -> %d)", before.Delivered, st.Delivered)
	}

	h3 := registration(t, "h3", 3)
	if err := catalogsync.Register(ctx, c, h3); err != nil {
		t.Fatal(err)
	}
	next(t, ch, "h2 and h3", func(s catalogsync.Snapshot) bool { return len(ids(s)) == 2 })

	if err := catalogsync.Deregister(ctx, c, "h2"); err != nil {
		t.Fatal(err)
	}
	next(t, ch, "h3 only", func(s catalogsync.Snapshot) bool {
		m := ids(s)
		_, h2 := m["meshd-h2"]
		_, h3 := m["meshd-h3"]
		return !h2 && h3
	})
	st := w.State()
	if !st.Reachable || st.LastIndex == 0 || st.LastGoodRead.IsZero() {
		t.Errorf("state = %+v, want reachable with an index and a read time", st)
	}
}

// TestHTTPMatchesAPI reads the same instances, one of them with a
// critical check and one in maintenance, through the raw reader (twice, the
// second time from its cache) and through the API client: the entries are
// the same.
func TestHTTPMatchesAPI(t *testing.T) {
	consul := testlab.StartDevConsul(t)
	c, h := clients(t, consul)
	ctx := context.Background()
	for i, node := range []string{"h1", "h2", "h3"} {
		r := registration(t, node, byte(i+1))
		r.Tags = []string{"gateway", "x"}
		if err := catalogsync.Register(ctx, c, r); err != nil {
			t.Fatal(err)
		}
	}
	check := &api.AgentCheckRegistration{ID: "c2", Name: "c2", ServiceID: "meshd-h2", AgentServiceCheck: api.AgentServiceCheck{TTL: "1h", Status: api.HealthCritical}}
	if err := c.Agent().CheckRegister(check); err != nil {
		t.Fatal(err)
	}
	if err := c.Agent().EnableServiceMaintenance("meshd-h3", "test"); err != nil {
		t.Fatal(err)
	}
	q := &api.QueryOptions{AllowStale: true}
	for round := range 2 {
		got, rawMeta, err := h.Service(ctx, "meshd", q)
		if err != nil {
			t.Fatal(err)
		}
		entries, meta, err := c.Health().Service("meshd", "", false, q)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(catalogsync.Convert(entries), got); diff != "" {
			t.Errorf("round %d: raw read differs from the API's (-api +raw):\n%s", round, diff)
		}
		if index := rawMeta.LastIndex; index == 0 || index > meta.LastIndex {
			t.Errorf("round %d: index %d, API says %d", round, index, meta.LastIndex)
		}
		if !rawMeta.KnownLeader || rawMeta.LastContact != meta.LastContact {
			t.Errorf("round %d: raw read's leader contact %+v, API says %v %v", round, rawMeta, meta.KnownLeader, meta.LastContact)
		}
	}
	if _, _, err := h.Service(ctx, "meshd", &api.QueryOptions{Datacenter: "nowhere"}); err == nil {
		t.Error("a read from an unknown datacenter succeeded")
	}
}

// TestWatchSurvivesConsulRestart stops the real Consul, so the watch fails
// and backs off, then starts a fresh one whose index is lower than before:
// the watch must reset its index and see the new catalog.
func TestWatchSurvivesConsulRestart(t *testing.T) {
	consul := testlab.StartDevConsul(t)
	c := consul.Client(t)
	ctx := context.Background()
	// Push the index up so that the fresh server's index is lower.
	for i := range 20 {
		if err := catalogsync.Register(ctx, c, registration(t, "h2", byte(2+i%2))); err != nil {
			t.Fatal(err)
		}
	}
	w, ch, _ := watch(t, c)
	s := next(t, ch, "h2", func(s catalogsync.Snapshot) bool { return len(s.Entries) == 1 })
	highIndex := s.Index

	consul.Stop()
	deadline := time.Now().Add(20 * time.Second)
	for w.State().Reachable {
		if time.Now().After(deadline) {
			t.Fatal("watch still reachable 20s after Consul stopped")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if w.State().LastError == "" {
		t.Error("unreachable state carries no error")
	}

	consul.Start(t)
	consul.WaitLeader(t)
	if err := catalogsync.Register(ctx, c, registration(t, "h9", 9)); err != nil {
		t.Fatal(err)
	}
	s = next(t, ch, "h9 from the restarted server", func(s catalogsync.Snapshot) bool { _, ok := ids(s)["meshd-h9"]; return ok })
	if s.Index >= highIndex {
		t.Logf("restarted server's index %d is not below %d; reset path not exercised", s.Index, highIndex)
	}
	if !w.State().Reachable {
		t.Error("watch not reachable after Consul came back")
	}
}

// TestReadEvery: a watch with ReadEvery reads the whole list once, then
// not again within the interval (an hour here) though the list changed;
// ReadNow reads it at once, and a second ReadNow within ReadNowEvery
// waits.
func TestReadEvery(t *testing.T) {
	testlab.RequireRoot(t)
	c, _ := clients(t, testlab.StartDevConsul(t))
	ctx, cancel := context.WithCancel(context.Background())
	w := &catalogsync.Watcher{Client: c, Service: "meshd", ReadEvery: time.Hour, ReadNowEvery: time.Hour}
	ch := make(chan catalogsync.Snapshot, 10)
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.Run(ctx, func(s catalogsync.Snapshot) { ch <- s })
	}()
	defer func() { cancel(); <-done }()
	next(t, ch, "the first read", func(catalogsync.Snapshot) bool { return true })

	r1 := registration(t, "h1", 1)
	if err := catalogsync.Register(ctx, c, r1); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	if n := w.State().Reads; n != 1 {
		t.Fatalf("%d reads within 2s of the first, want 1 (the next is an hour away)", n)
	}
	w.ReadNow()
	if s := next(t, ch, "h1 after ReadNow", func(s catalogsync.Snapshot) bool { _, ok := ids(s)[r1.ID()]; return ok }); s.Index == 0 {
		t.Error("a snapshot with index 0")
	}

	r2 := registration(t, "h2", 2)
	if err := catalogsync.Register(ctx, c, r2); err != nil {
		t.Fatal(err)
	}
	w.ReadNow()
	time.Sleep(2 * time.Second)
	if n := w.State().Reads; n != 2 {
		t.Errorf("%d reads after a second ReadNow within ReadNowEvery, want 2", n)
	}
}
