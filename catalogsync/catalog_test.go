package catalogsync

import (
	"context"
	"encoding/json"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/health"
	"meshd.dev/meshd/internal/testlab"
)

// TestCatalog runs two nodes' catalogs against one real Consul: what one
// publishes, withdraws and puts reaches Consul and the other's Watch, with
// the hint written after each change; the Watch ends with its context and
// waits for its hint writers.
func TestCatalog(t *testing.T) {
	c := testlab.StartDevConsul(t).Client(t)
	node, err := c.Agent().NodeName()
	if err != nil {
		t.Fatal(err)
	}
	key, _ := wgtypes.GeneratePrivateKey()
	reg := Registration{Service: "meshd", Node: "h2", PublicKey: key.PublicKey(),
		Endpoint: netip.MustParseAddrPort("192.0.2.2:51820"), Prefix: netip.MustParsePrefix("fdaa:0:2::/48")}
	writer := &Catalog{Client: c, Service: "meshd", HintKey: "meshd/hint"}
	reader := &Catalog{Client: c, Service: "meshd", HintKey: "meshd/hint"}

	var mu sync.Mutex
	var views []Snapshot
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		reader.Watch(ctx, ServiceID("h1"), func(s Snapshot) {
			mu.Lock()
			views = append(views, s)
			mu.Unlock()
		})
	}()
	last := func() *Snapshot {
		mu.Lock()
		defer mu.Unlock()
		if len(views) == 0 {
			return nil
		}
		return &views[len(views)-1]
	}
	hint := func() Hint {
		kv, _, err := c.KV().Get("meshd/hint", nil)
		if err != nil || kv == nil {
			return Hint{}
		}
		h, _ := ParseHint(kv.Value)
		return h
	}
	testlab.Eventually(t, 10*time.Second, "the first (empty) list", func() bool { return last() != nil })

	if err := writer.Publish(ctx, reg, false); err != nil {
		t.Fatal(err)
	}
	writer.Wait()
	if h := hint(); h.ServiceID != reg.ID() || h.ConsulNode != node {
		t.Errorf("hint after Publish = %+v", h)
	}
	testlab.Eventually(t, 10*time.Second, "the published entry in the reader's view", func() bool {
		s := last()
		return s != nil && len(s.Entries) == 1 && reg.Matches(s.Entries[0])
	})

	s := health.Summary{Node: "h2", Converged: true}
	if err := writer.PutSummary(ctx, s); err != nil {
		t.Fatal(err)
	}
	if kv, _, err := c.KV().Get(health.SummaryPrefix+"h2", nil); err != nil || kv == nil {
		t.Fatalf("summary not put: %v", err)
	}
	before := hint().Index
	if err := writer.Withdraw(ctx, reg); err != nil {
		t.Fatal(err)
	}
	if h := hint(); h.ServiceID != reg.ID() || h.Index <= before {
		t.Errorf("hint after Withdraw = %+v, want a newer one than index %d", h, before)
	}
	if kv, _, _ := c.KV().Get(health.SummaryPrefix+"h2", nil); kv != nil {
		t.Error("Withdraw left the health summary")
	}
	testlab.Eventually(t, 10*time.Second, "the entry gone from the reader's view", func() bool {
		s := last()
		return s != nil && len(s.Entries) == 0
	})
	if st := reader.State(); st.Hints < 2 || !st.Reachable {
		t.Errorf("reader state %+v, want two hints counted", st)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Watch did not end with its context")
	}
}

// TestFleetForgedSummary: a summary counts only under its own node's key:
// one host writing a summary that names another (its token may write only
// its own key) does not become that host's row.
func TestFleetForgedSummary(t *testing.T) {
	c := testlab.StartDevConsul(t).Client(t)
	put := func(key string, s health.Summary) {
		b, _ := json.Marshal(s)
		if _, err := c.KV().Put(&api.KVPair{Key: key, Value: b}, nil); err != nil {
			t.Fatal(err)
		}
	}
	put(health.SummaryPrefix+"h1", health.Summary{Node: "h1", Converged: true})
	put(health.SummaryPrefix+"h3", health.Summary{Node: "h2", Converged: true}) // h3 forging h2's row
	_, summaries, err := Fleet(context.Background(), c, "meshd")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := summaries["h2"]; ok || len(summaries) != 1 || !summaries["h1"].Converged {
		t.Errorf("summaries = %+v, want h1's alone", summaries)
	}
}
