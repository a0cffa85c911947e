package metrics

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"meshd.dev/meshd/agent"
)

// TestHandler: the metrics listener serves the metrics and no profiler,
// and scrapes, however many at once, read the agent's status once a
// second at most.
func TestHandler(t *testing.T) {
	var reads atomic.Int32
	h := Handler(func() agent.Status {
		reads.Add(1)
		return agent.Status{Node: "h1", Converged: true, Peers: []agent.PeerStatus{{Node: "h2", State: agent.PeerApplied}}}
	})
	srv := httptest.NewServer(h)
	defer srv.Close()
	get := func(path string) (int, string) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, body := get("/metrics")
	if code != 200 || !strings.Contains(body, "meshd_converged 1") || !strings.Contains(body, `meshd_peers{state="applied"} 1`) {
		t.Fatalf("/metrics: %d\n%s", code, body)
	}
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/heap", "/debug/pprof/goroutine?debug=2"} {
		if code, _ := get(path); code != http.StatusNotFound {
			t.Errorf("%s on the metrics listener: %d, want 404", path, code)
		}
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() { get("/metrics") })
	}
	wg.Wait()
	if n := reads.Load(); n > 2 {
		t.Errorf("%d status reads for 9 scrapes within a second, want 1 (2 if the second turned)", n)
	}
}

func TestCached(t *testing.T) {
	var reads atomic.Int32
	st := Cached(func() agent.Status { reads.Add(1); return agent.Status{} }, 20*time.Millisecond)
	st()
	st()
	if n := reads.Load(); n != 1 {
		t.Errorf("%d reads within the TTL, want 1", n)
	}
	time.Sleep(30 * time.Millisecond)
	st()
	if n := reads.Load(); n != 2 {
		t.Errorf("%d reads after the TTL, want 2", n)
	}
}
