package catalogsync

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/google/go-cmp/cmp"
	"golang.org/x/time/rate"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/health"
	"meshd.dev/meshd/internal/testlab"
	"meshd.dev/meshd/peers"
)

// TestCatalog runs two nodes' catalogs against one real Consul: what one
// publishes, withdraws and puts reaches Consul and the other's Watch, with
// the hint written after each change; the Watch ends with its context and
// waits for its hint writers.
func TestCatalog(t *testing.T) {
	c, node, reg, writer := h2Writer(t)
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

// TestStaleAnswers feeds the Catalog scripted answers of the health
// endpoint: a fake, because a real Consul server cannot be made to lag its
// leader by a chosen minute, or to answer with an older index, on demand.
// An answer from a server out of touch with its leader for longer than
// MaxStale is not applied, and status says why; an answer whose index went
// backwards does not bring back an older version of an instance. Both
// read paths (the API client and the raw reader) are tried.
func TestStaleAnswers(t *testing.T) {
	for _, raw := range []bool{false, true} {
		t.Run(map[bool]string{false: "api", true: "raw"}[raw], func(t *testing.T) {
			type answer struct {
				index, modify uint64
				key           string
				lastContactMS int
			}
			answers := []answer{
				{index: 10, modify: 10, key: "k1"},
				{index: 12, modify: 12, key: "k-stale", lastContactMS: 60000}, // a minute out of touch
				{index: 5, modify: 8, key: "k0"},                              // index went backwards: an older version
				{index: 20, modify: 20, key: "k2"},
			}
			var mu sync.Mutex
			served := 0
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if !strings.HasPrefix(r.URL.Path, "/v1/health/service/") {
					// The revocations folder: empty, and then an idle
					// blocking query.
					if r.URL.Query().Get("index") != "" {
						<-r.Context().Done()
						return
					}
					w.Header().Set("X-Consul-Index", "1")
					w.WriteHeader(http.StatusNotFound)
					return
				}
				mu.Lock()
				a := answers[min(served, len(answers)-1)]
				if served < len(answers) {
					served++
				}
				last := served == len(answers)
				mu.Unlock()
				if last && r.URL.Query().Get("index") == "20" {
					time.Sleep(200 * time.Millisecond) // the last answer holds, as a blocking query would
				}
				w.Header().Set("X-Consul-Index", strconv.FormatUint(a.index, 10))
				w.Header().Set("X-Consul-LastContact", strconv.Itoa(a.lastContactMS))
				w.Header().Set("X-Consul-KnownLeader", "true")
				fmt.Fprintf(w, `[{"Node":{"Node":"n"},"Service":{"ID":"meshd-h2","Service":"meshd","Meta":{"v":"1","public_key":%q},"CreateIndex":3,"ModifyIndex":%d},"Checks":[]}]`, a.key, a.modify)
			}))
			defer srv.Close()
			cfg := &api.Config{Address: strings.TrimPrefix(srv.URL, "http://")}
			client, err := api.NewClient(cfg)
			if err != nil {
				t.Fatal(err)
			}
			cat := &Catalog{Client: client, Service: "meshd", MaxStale: 30 * time.Second,
				Limiter: rate.NewLimiter(rate.Inf, 1)}
			if raw {
				cat.HTTP = NewHTTP(cfg)
			}
			var views []string
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() {
				defer close(done)
				cat.Watch(ctx, "meshd-h1", func(s Snapshot) {
					mu.Lock()
					defer mu.Unlock()
					for _, e := range s.Entries {
						views = append(views, fmt.Sprintf("%d:%s", s.Index, e.Meta["public_key"]))
					}
				})
			}()
			testlab.Eventually(t, 20*time.Second, "the last answer delivered", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(views) > 0 && views[len(views)-1] == "20:k2"
			})
			cancel()
			<-done
			mu.Lock()
			defer mu.Unlock()
			if diff := cmp.Diff([]string{"10:k1", "5:k1", "20:k2"}, views); diff != "" {
				t.Errorf("views (-want +got):\n%s", diff)
			}
			if st := cat.State(); st.OlderKept != 1 {
				t.Errorf("state %+v, want one older version kept", st)
			}
		})
	}
}

// TestStaleStatus: while every answer is too stale, nothing is delivered
// and the watch's state says why.
func TestStaleStatus(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Consul-Index", "10")
		w.Header().Set("X-Consul-LastContact", "45000")
		w.Write([]byte(`[]`))
	}))
	defer srv.Close()
	client, _ := api.NewClient(&api.Config{Address: strings.TrimPrefix(srv.URL, "http://")})
	cat := &Catalog{Client: client, Service: "meshd", MaxStale: 30 * time.Second}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	delivered := false
	go func() {
		defer close(done)
		cat.Watch(ctx, "meshd-h1", func(Snapshot) { delivered = true })
	}()
	testlab.Eventually(t, 10*time.Second, "the stale answer reported", func() bool {
		return strings.Contains(cat.State().LastError, "last heard from the leader 45s ago (catalog.max_stale 30s)")
	})
	cancel()
	<-done
	if delivered {
		t.Error("a stale answer was delivered")
	}
}

// TestKeepNewestWindow: an older version of an instance is replaced by the
// newer one seen within the window (a lagging server), and believed after
// it (the servers restored an older snapshot: their indexes went back for
// good, and the host has since registered again).
func TestKeepNewestWindow(t *testing.T) {
	entry := func(modify uint64, key string) peers.Entry {
		return peers.Entry{ServiceID: "meshd-h2", CreateIndex: 3, ModifyIndex: modify, Meta: map[string]string{"public_key": key}}
	}
	for _, tt := range []struct {
		name    string
		seenAgo time.Duration
		want    string
	}{
		{"lagging server within the window", 10 * time.Second, "new"},
		{"restored servers after the window", 2 * time.Minute, "old"},
	} {
		c := &Catalog{MaxStale: 30 * time.Second}
		c.newest = map[string]seenEntry{"meshd-h2": {entry(10, "new"), time.Now().Add(-tt.seenAgo)}}
		s := &Snapshot{Index: 5, Entries: []peers.Entry{entry(8, "old")}}
		c.keepNewest(s)
		if got := s.Entries[0].Meta["public_key"]; got != tt.want {
			t.Errorf("%s: %s applied, want %s", tt.name, got, tt.want)
		}
	}
}

// TestWatchDeltas: with the list read rarely, a hint's read is delivered
// as a delta naming the one changed service ID; a read of the whole list
// is not a delta.
func TestWatchDeltas(t *testing.T) {
	c, _, reg, writer := h2Writer(t)
	reader := &Catalog{Client: c, Service: "meshd", HintKey: "meshd/hint", FullReadInterval: time.Hour}

	ctx := t.Context()
	seen := watchViews(t, reader, "h1")
	testlab.Eventually(t, 10*time.Second, "the first list", func() bool { return len(seen()) > 0 })
	if first := seen()[0]; first.Delta {
		t.Fatalf("the first view is a delta: %+v", first)
	}
	if err := writer.Publish(ctx, reg, false); err != nil {
		t.Fatal(err)
	}
	writer.Wait()
	testlab.Eventually(t, 10*time.Second, "the published entry in the reader's view", func() bool {
		vs := seen()
		s := vs[len(vs)-1]
		return len(s.Entries) == 1 && reg.Matches(s.Entries[0])
	})
	vs := seen()
	got := vs[len(vs)-1]
	if !got.Delta || !slices.Equal(got.Changed, []string{reg.ID()}) {
		t.Errorf("the view after a hint: delta %v, changed %q; want a delta naming %s", got.Delta, got.Changed, reg.ID())
	}
	// A value that is not a hint makes the reader read the whole list.
	if _, err := c.KV().Put(&api.KVPair{Key: "meshd/hint", Value: []byte("not a hint")}, nil); err != nil {
		t.Fatal(err)
	}
	n := len(vs)
	testlab.Eventually(t, 10*time.Second, "a read of the whole list", func() bool {
		return slices.ContainsFunc(seen()[n:], func(s Snapshot) bool { return !s.Delta })
	})
}

// h2Writer starts a dev Consul and returns its client, its agent's node
// name, a registration of mesh node h2 and a catalog to publish it with
// (hints on, at meshd/hint).
func h2Writer(t *testing.T) (*api.Client, string, Registration, *Catalog) {
	t.Helper()
	c := testlab.StartDevConsul(t).Client(t)
	node, err := c.Agent().NodeName()
	if err != nil {
		t.Fatal(err)
	}
	key, _ := wgtypes.GeneratePrivateKey()
	reg := Registration{Service: "meshd", Node: "h2", PublicKey: key.PublicKey(),
		Endpoint: netip.MustParseAddrPort("192.0.2.2:51820"), Prefix: netip.MustParsePrefix("fdaa:0:2::/48")}
	return c, node, reg, &Catalog{Client: c, Service: "meshd", HintKey: "meshd/hint"}
}

// watchViews runs reader.Watch as host node until the test ends and
// returns what it has delivered so far.
func watchViews(t *testing.T, reader *Catalog, node string) (seen func() []Snapshot) {
	var mu sync.Mutex
	var views []Snapshot
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		reader.Watch(ctx, ServiceID(node), func(s Snapshot) {
			mu.Lock()
			views = append(views, s)
			mu.Unlock()
		})
	})
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	return func() []Snapshot {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(views)
	}
}
