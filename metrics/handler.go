package metrics

import (
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"meshd.dev/meshd/agent"
)

// statusTTL is how long a status read serves scrapes: a status reads the
// whole WireGuard device (a fifth of a second at 10,000 peers, holding its
// lock), so scrapes, however many, read it at most once a second.
const statusTTL = time.Second

// maxScrapes is how many scrapes are served at once; more get 503.
const maxScrapes = 2

// Handler serves GET /metrics (the agent's status, read at most once per
// statusTTL, at most maxScrapes at a time) and nothing else: no profiler,
// which is on the control socket (meshd debug pprof).
func Handler(status func() agent.Status) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(Collector{Status: Cached(status, statusTTL)})
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{MaxRequestsInFlight: maxScrapes}))
	return mux
}

// Cached returns status through a cache: a read younger than ttl is
// served again; concurrent callers wait for one read.
func Cached(status func() agent.Status, ttl time.Duration) func() agent.Status {
	var (
		mu   sync.Mutex
		last agent.Status
		at   time.Time
	)
	return func() agent.Status {
		mu.Lock()
		defer mu.Unlock()
		if at.IsZero() || time.Since(at) >= ttl {
			last, at = status(), time.Now()
		}
		return last
	}
}
