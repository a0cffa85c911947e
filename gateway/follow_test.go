package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/consul/api"

	"meshd.dev/meshd/catalogsync"
	"meshd.dev/meshd/internal/loop"
	"meshd.dev/meshd/internal/testlab"
)

// TestRecordSet: full reads and single-record reads merge by the index
// they were read at; an older read never undoes a newer one.
func TestRecordSet(t *testing.T) {
	p := func(key string, modify uint64) Pair { return Pair{Key: key, ModifyIndex: modify} }
	keys := func(s *recordSet) map[string]uint64 {
		out := map[string]uint64{}
		for k, v := range s.pairs {
			out[k] = v.ModifyIndex
		}
		return out
	}
	s := newRecordSet()
	s.list([]Pair{p("a", 5), p("b", 6)}, 10)
	s.one("c", &Pair{Key: "c", ModifyIndex: 12}, 12) // created after the list
	s.one("a", nil, 13)                              // removed after it
	s.one("b", &Pair{Key: "b", ModifyIndex: 4}, 9)   // an older read of b
	if diff := cmp.Diff(map[string]uint64{"b": 6, "c": 12}, keys(s)); diff != "" {
		t.Errorf("after the single reads (-want +got):\n%s", diff)
	}
	// A list read before those changes (a lagging server) undoes none.
	s.list([]Pair{p("a", 5), p("b", 6)}, 11)
	if diff := cmp.Diff(map[string]uint64{"b": 6, "c": 12}, keys(s)); diff != "" {
		t.Errorf("after an older list (-want +got):\n%s", diff)
	}
	// A newer list is the authority: c went, d came.
	s.list([]Pair{p("b", 6), p("d", 20)}, 21)
	if diff := cmp.Diff(map[string]uint64{"b": 6, "d": 20}, keys(s)); diff != "" {
		t.Errorf("after a newer list (-want +got):\n%s", diff)
	}
	if got := s.slice(); len(got) != 2 || got[0].Key != "b" || got[1].Key != "d" {
		t.Errorf("slice = %v, want b, d in order", got)
	}
}

// TestFollowRecords runs the gateway's record follower against a real
// Consul: one read of every record at start, then one read of one record
// per change (create, remove), and a read of every record again when the
// hints were lost, which also brings a record written without a hint.
func TestFollowRecords(t *testing.T) {
	c := testlab.StartDevConsul(t).Client(t)
	ctx, cancel := context.WithCancel(context.Background())
	gw := Info{Node: "gw", PublicKey: key(1), Endpoint: netip.MustParseAddrPort("192.0.2.1:51821"),
		Pool: netip.MustParsePrefix("fdaa:0:1:8000::/49"), Prefix: netip.MustParsePrefix("fdaa:0:1::/48")}
	req := func(name string, n byte) Request {
		return Request{Org: "acme", Name: name, PublicKey: key(n), Allow: []netip.Prefix{supernet}}
	}
	for i := range 5 {
		if _, err := Create(ctx, c, gw, req(fmt.Sprintf("p%d", i), byte(10+i)), t0); err != nil {
			t.Fatal(err)
		}
	}
	r := &Runner{opts: Options{Consul: c, Node: "gw", Logger: slog.New(slog.DiscardHandler)},
		watcher: &catalogsync.Watcher{Client: c}, records: newRecordSet()}
	var wg sync.WaitGroup
	wg.Go(func() { r.followRecords(ctx, &loop.Loop{}) })
	defer func() {
		cancel()
		wg.Wait()
	}()
	state := func() (names []string, full, one uint64) {
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, p := range r.records.slice() {
			names = append(names, p.Key[len(PeersKey("gw")):])
		}
		return names, r.fullReads, r.recordReads
	}
	wait := func(what string, want []string) {
		t.Helper()
		testlab.Eventually(t, 10*time.Second, what, func() bool {
			names, _, _ := state()
			return cmp.Equal(want, names)
		})
	}
	wait("the first read", []string{"acme/p0", "acme/p1", "acme/p2", "acme/p3", "acme/p4"})
	_, full0, one0 := state()

	if _, err := Create(ctx, c, gw, req("p5", 20), t0); err != nil {
		t.Fatal(err)
	}
	if _, err := Remove(ctx, c, "gw", "acme", "p0"); err != nil {
		t.Fatal(err)
	}
	wait("a create and a remove", []string{"acme/p1", "acme/p2", "acme/p3", "acme/p4", "acme/p5"})
	if _, full, one := state(); full != full0 || one-one0 < 2 || one-one0 > 3 {
		t.Errorf("a create and a remove cost %d full reads and %d record reads, want none and 2 (3 with the start's hint)", full-full0, one-one0)
	}

	// A record written without its hint (its writer died) is not seen...
	rec := Record{Org: "acme", Name: "silent", PublicKey: key(30).String(), Address: netip.MustParseAddr("fdaa:0:1:8000::99"),
		Allow: []netip.Prefix{supernet}, Created: t0}
	if _, err := c.KV().Put(&api.KVPair{Key: RecordKey("gw", "acme", "silent"), Value: rec.Encode()}, nil); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if names, _, _ := state(); len(names) != 5 {
		t.Fatalf("a record without a hint was read: %v", names)
	}
	// ...until hints are lost (the key overwritten with something else):
	// then everything is read at once.
	if _, err := c.KV().Put(&api.KVPair{Key: ChangesKey("gw"), Value: []byte("not a hint")}, nil); err != nil {
		t.Fatal(err)
	}
	wait("the read of every record after lost hints", []string{"acme/p1", "acme/p2", "acme/p3", "acme/p4", "acme/p5", "acme/silent"})
	if _, full, _ := state(); full != full0+1 {
		t.Errorf("%d full reads after lost hints, want 1", full-full0)
	}
}
