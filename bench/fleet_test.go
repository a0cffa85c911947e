package bench

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/catalogsync"
	"meshd.dev/meshd/internal/testlab"
	"meshd.dev/meshd/peers"
)

var (
	fleetWatchersFlag = flag.String("fleet-watchers", "1000,5000,10000", "TestFleet: counts of simulated watching hosts")
	fleetNodesFlag    = flag.Int("fleet-nodes", 10000, "TestFleet: entries in the catalog")
	fleetChangesFlag  = flag.Int("fleet-changes", 30, "TestFleet: changes per watcher count, about one a second")
	fleetListFlag     = flag.Int("fleet-list-watchers", 20, "TestFleet: simulated hosts reading the whole list on every change, for comparison")
	fleetListChanges  = flag.Int("fleet-list-changes", 10, "TestFleet: changes for the whole-list comparison")
	fleetHostCost     = flag.String("fleet-host-cost", "", "TestFleet: the host costs TestBench wrote (-host-cost-out) in the same run, to add up fleet-wide figures")
	fleetOutFlag      = flag.String("fleet-out", "", "TestFleet: write the report (markdown) to this file")
	hostCostOutFlag   = flag.String("host-cost-out", "", "TestBench: write each size's host cost per change and whole-list read (JSON) here, for TestFleet")
)

// HostCost is what TestBench measured a host to pay at one catalog size,
// handed to TestFleet to add up fleet-wide figures.
type HostCost struct {
	N int `json:"n"`
	// PerChange is meshd and its agent per change, minus idle.
	PerChange time.Duration `json:"per_change"`
	// FullRead is one read of the whole list (meshd and its agent), and
	// FullReadAgent the agent's part of it.
	FullRead      time.Duration `json:"full_read"`
	FullReadAgent time.Duration `json:"full_read_agent"`
}

// countingDialer counts the bytes of every connection it made, both ways:
// everything the simulated hosts and the server exchanged over HTTP.
type countingDialer struct {
	rx, tx atomic.Int64
}

type countingConn struct {
	net.Conn
	d *countingDialer
}

func (c countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.d.rx.Add(int64(n))
	return n, err
}

func (c countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.d.tx.Add(int64(n))
	return n, err
}

func (d *countingDialer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var nd net.Dialer
	c, err := nd.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return countingConn{c, d}, nil
}

func (d *countingDialer) bytes() int64 { return d.rx.Load() + d.tx.Load() }

// simHost is one simulated watching host: it asks the server exactly what
// meshd asks through its agent per change (a blocking query on the hint
// key, and the one instance the hint names when the hint does not carry
// it, on the same connection), or, for the comparison, a blocking query on
// the whole list.
type simHost struct {
	client *http.Client
	base   string
	// done is the last hint number whose instance it read (hints), or the
	// last list index it read (list).
	done  atomic.Uint64
	ready atomic.Bool // made its first read
	errs  atomic.Int64
}

func get(ctx context.Context, c *http.Client, url string) ([]byte, uint64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, 0, err
	}
	req.Header.Set("Accept-Encoding", "identity") // as meshd asks
	resp, err := c.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, 0, err
	}
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusNotFound {
		return nil, 0, fmt.Errorf("%s: %s", url, resp.Status)
	}
	index, _ := strconv.ParseUint(resp.Header.Get("X-Consul-Index"), 10, 64)
	return b, index, nil
}

// runHints follows the hint key: for each new hint, the instance it names.
func (h *simHost) runHints(ctx context.Context, key string) {
	var index uint64
	for ctx.Err() == nil {
		b, got, err := get(ctx, h.client, fmt.Sprintf("%s/v1/kv/%s?stale&wait=5m&index=%d", h.base, key, index))
		if err != nil {
			if ctx.Err() == nil {
				h.errs.Add(1)
				time.Sleep(100 * time.Millisecond)
			}
			continue
		}
		h.ready.Store(true)
		index = catalogsync.NextIndex(index, got)
		var pairs []struct{ Value []byte }
		if json.Unmarshal(b, &pairs) != nil || len(pairs) != 1 {
			continue
		}
		hint, err := catalogsync.ParseHint(pairs[0].Value)
		if err != nil || hint.Seq <= h.done.Load() {
			continue
		}
		if hint.Carried != nil {
			h.done.Store(hint.Seq) // nothing more to read
			continue
		}
		// What catalogsync.ReadInstance asks: the node's services, waiting
		// briefly for a lagging server to reach the hint's index.
		if _, _, err := get(ctx, h.client, fmt.Sprintf("%s/v1/catalog/node-services/%s?stale&wait=2s&index=%d", h.base, hint.ConsulNode, hint.Index-1)); err != nil {
			if ctx.Err() == nil {
				h.errs.Add(1)
			}
			continue
		}
		h.done.Store(hint.Seq)
	}
}

// runList follows the whole list, as a host without hints does.
func (h *simHost) runList(ctx context.Context) {
	var index uint64
	for ctx.Err() == nil {
		_, got, err := get(ctx, h.client, fmt.Sprintf("%s/v1/health/service/meshd?stale&wait=5m&index=%d", h.base, index))
		if err != nil {
			if ctx.Err() == nil {
				h.errs.Add(1)
				time.Sleep(100 * time.Millisecond)
			}
			continue
		}
		index = catalogsync.NextIndex(index, got)
		h.done.Store(index)
		h.ready.Store(true)
	}
}

// fleetPoint is what one count of simulated hosts cost the server.
type fleetPoint struct {
	W, Changes int
	// ServerPerChange is the server's CPU per change, minus an idle
	// window as long; BytesPerChange what all W exchanged with it.
	ServerPerChange time.Duration
	BytesPerChange  float64
	ServerIdle      time.Duration // per minute
	FanOut          []time.Duration
	Errors          int64
}

// TestFleet simulates the servers' side of a fleet: W hosts, each doing
// exactly the queries meshd makes per host (straight to the server over
// HTTP: an upper bound of what the server pays, as an agent would pool
// them over RPC), against one Consul server holding -fleet-nodes entries.
// A change is a node's entry rewritten and its hint written; the server's
// CPU (/proc) over a window of changes, minus an idle window as long, per
// change. Then the same for hosts reading the whole list on every change.
func TestFleet(t *testing.T) {
	testlab.RequireRoot(t)
	var counts []int
	for _, s := range strings.Split(*fleetWatchersFlag, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			t.Fatalf("-fleet-watchers %q: want positive numbers", *fleetWatchersFlag)
		}
		counts = append(counts, n)
	}
	// Every simulated host holds a connection, and so does the server.
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur < uint64(slices.Max(counts))+1000 {
		t.Fatalf("open files limit %d (for %d connections): %v", lim.Cur, slices.Max(counts), err)
	}
	// Consul wants its file limit to exceed this by 20 at least.
	conns := min(2*slices.Max(counts)+1000, int(lim.Cur)-100)
	server := testlab.StartDevConsul(t, fmt.Sprintf("limits { http_max_conns_per_client = %d }", conns))
	c := server.Client(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	start := time.Now()
	var sims []Sim
	for len(sims) < *fleetNodesFlag {
		batch := make([]Sim, 0, 40)
		for range min(40, *fleetNodesFlag-len(sims)) {
			s, err := NewSim(len(sims) + len(batch))
			if err != nil {
				t.Fatal(err)
			}
			batch = append(batch, s)
		}
		if err := txnSims(ctx, c, batch); err != nil {
			t.Fatalf("register simulated nodes: %v", err)
		}
		sims = append(sims, batch...)
	}
	t.Logf("catalog filled with %d entries in %s", len(sims), time.Since(start).Round(time.Millisecond))

	const hintKey = "meshd/hint"
	next := 0
	// change rewrites one node's entry (a key rotation) and returns the
	// catalog index that shows it, and the entry as it shows it.
	change := func() (Sim, uint64, *peers.Entry) {
		s := sims[next%len(sims)]
		next++
		k, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			t.Fatal(err)
		}
		s.Key = k.PublicKey()
		sims[(next-1)%len(sims)] = s
		if err := Txn(ctx, c, s.Ops()); err != nil {
			t.Fatal(err)
		}
		h := catalogsync.Hint{ConsulNode: s.Name(), ServiceID: s.Registration().ID()}
		var seen *peers.Entry
		index, err := catalogsync.WaitInstance(ctx, c, "meshd", h, func(e *peers.Entry) bool {
			seen = e
			return e != nil && e.Meta[peers.MetaPublicKey] == s.Key.String()
		})
		if err != nil {
			t.Fatal(err)
		}
		return s, index, seen
	}
	cpu := func() time.Duration {
		ps, err := readProc(server.Pid())
		if err != nil {
			t.Fatal(err)
		}
		return ps.cpu
	}
	// measure runs n hosts (run), an idle window and a window of changes
	// (each made by one(), which returns what every host must reach), and
	// returns the server's cost per change.
	measure := func(n, changes int, run func(*simHost, context.Context), one func() uint64) fleetPoint {
		d := &countingDialer{}
		tr := &http.Transport{DialContext: d.dial, MaxIdleConns: 2 * n, MaxIdleConnsPerHost: 2 * n, IdleConnTimeout: 10 * time.Minute}
		hctx, stop := context.WithCancel(ctx)
		var wg sync.WaitGroup
		hosts := make([]*simHost, n)
		for i := range hosts {
			hosts[i] = &simHost{client: &http.Client{Transport: tr}, base: "http://" + server.HTTPAddr}
			wg.Go(func() { run(hosts[i], hctx) })
		}
		defer func() {
			stop()
			wg.Wait()
			tr.CloseIdleConnections()
			// Let the server see the connections closed before the next
			// count of hosts connects (it limits connections per client).
			time.Sleep(5 * time.Second)
		}()
		testlab.Eventually(t, 5*time.Minute, fmt.Sprintf("%d simulated hosts made their first read", n), func() bool {
			for _, h := range hosts {
				if !h.ready.Load() {
					return false
				}
			}
			return true
		})
		time.Sleep(2 * time.Second) // every first read answered, every host parked
		window := time.Duration(changes) * time.Second
		cpu0, b0, t0 := cpu(), d.bytes(), time.Now()
		time.Sleep(window)
		cpu1, b1, t1 := cpu(), d.bytes(), time.Now()
		p := fleetPoint{W: n, Changes: changes}
		for i := range changes {
			time.Sleep(time.Until(t1.Add(time.Duration(i) * time.Second)))
			want := one()
			acked := time.Now()
			testlab.Eventually(t, 2*time.Minute, "every simulated host read the change", func() bool {
				for _, h := range hosts {
					if h.done.Load() < want {
						return false
					}
				}
				return true
			})
			p.FanOut = append(p.FanOut, time.Since(acked))
		}
		cpu2, b2, t2 := cpu(), d.bytes(), time.Now()
		scale := float64(t2.Sub(t1)) / float64(t1.Sub(t0))
		idleCPU, idleBytes := cpu1-cpu0, float64(b1-b0)
		p.ServerPerChange = max(cpu2-cpu1-time.Duration(float64(idleCPU)*scale), 0) / time.Duration(changes)
		p.BytesPerChange = max(float64(b2-b1)-idleBytes*scale, 0) / float64(changes)
		p.ServerIdle = time.Duration(float64(idleCPU) * float64(time.Minute) / float64(t1.Sub(t0)))
		for _, h := range hosts {
			p.Errors += h.errs.Load()
		}
		return p
	}

	var hintPoints []fleetPoint
	for _, w := range counts {
		p := measure(w, *fleetChangesFlag, func(h *simHost, ctx context.Context) { h.runHints(ctx, hintKey) }, func() uint64 {
			s, index, e := change()
			// As catalogsync.Announce writes it: carrying the entry.
			h, err := catalogsync.WriteHint(ctx, c, hintKey, catalogsync.Hint{ConsulNode: s.Name(), ServiceID: s.Registration().ID(), Index: index, Carried: catalogsync.Carry(*e)})
			if err != nil {
				t.Fatal(err)
			}
			return h.Seq
		})
		t.Logf("W=%d hints: server %s per change, %.0f B per change, fan-out p50 %s max %s, idle %s a minute, %d errors", w,
			p.ServerPerChange, p.BytesPerChange, Quantile(p.FanOut, 0.5), slices.Max(p.FanOut), p.ServerIdle, p.Errors)
		hintPoints = append(hintPoints, p)
	}
	list := measure(*fleetListFlag, *fleetListChanges, func(h *simHost, ctx context.Context) { h.runList(ctx) }, func() uint64 {
		_, index, _ := change()
		return index
	})
	t.Logf("W=%d whole list per change: server %s per change, %.0f B per change, %d errors", list.W, list.ServerPerChange, list.BytesPerChange, list.Errors)

	var costs []HostCost
	if *fleetHostCost != "" {
		b, err := os.ReadFile(*fleetHostCost)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, &costs); err != nil {
			t.Fatalf("%s: %v", *fleetHostCost, err)
		}
	}
	report := fleetReport(*fleetNodesFlag, hintPoints, list, costs)
	t.Log("\n" + report)
	if *fleetOutFlag != "" {
		if err := os.WriteFile(*fleetOutFlag, []byte(report), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A read refused (the server's limit of connections from one
	// address, which every simulated host shares) is retried; more than
	// one in a hundred hosts would make the figures those of a smaller
	// fleet.
	for _, p := range append(hintPoints, list) {
		if p.Errors > int64(p.W)/100 {
			t.Errorf("W=%d: %d reads by simulated hosts failed", p.W, p.Errors)
		}
	}
}

// fleetReport is the BENCHMARKS.md section of TestFleet.
func fleetReport(n int, hints []fleetPoint, list fleetPoint, costs []HostCost) string {
	var b strings.Builder
	fmt.Fprintf(&b, "## Fleet simulation: the servers' side (same make bench)\n\n")
	fmt.Fprintf(&b, "One Consul server (dev mode) holding %d entries; W simulated hosts, each asking it exactly\n", n)
	fmt.Fprintf(&b, "what meshd asks per host, straight over HTTP (an upper bound: an agent would carry them over\n")
	fmt.Fprintf(&b, "RPC): a blocking query on the hint key, whose value carries the changed entry (the one node's\n")
	fmt.Fprintf(&b, "services are read only for a hint that carries none). A change is one node's entry rewritten\n")
	fmt.Fprintf(&b, "and its hint written, about one a second; the server's CPU (/proc) over %d changes minus an\n", hints[0].Changes)
	fmt.Fprintf(&b, "idle window as long, per change; bytes both ways over every host's connection, the same way;\n")
	fmt.Fprintf(&b, "fan-out from the hint's write to the last host's read of it.\n")
	fmt.Fprintf(&b, "For comparison, %d simulated hosts reading the whole list on every change (%d changes).\n\n", list.W, list.Changes)
	fmt.Fprintf(&b, "| W | server CPU per change | bytes per change (all W) | fan-out p50 / max | server idle per minute | reads retried |\n| --- | --- | --- | --- | --- | --- |\n")
	for _, p := range hints {
		fmt.Fprintf(&b, "| %d | %s ms | %.0f | %s / %s ms | %s ms | %d |\n", p.W, ms(p.ServerPerChange), p.BytesPerChange, ms(Quantile(p.FanOut, 0.5)), ms(slices.Max(p.FanOut)), ms(p.ServerIdle), p.Errors)
	}
	perList := list.ServerPerChange / time.Duration(list.W)
	fmt.Fprintf(&b, "| %d reading the whole list | %s ms (%s ms a host) | %.0f (%.0f a host) | - | %s ms | %d |\n\n",
		list.W, ms(list.ServerPerChange), ms(perList), list.BytesPerChange, list.BytesPerChange/float64(list.W), ms(list.ServerIdle), list.Errors)
	var cost *HostCost
	for i := range costs {
		if costs[i].N == n {
			cost = &costs[i]
		}
	}
	if cost == nil {
		fmt.Fprintf(&b, "No host cost at N = %d from TestBench in this run: fleet-wide figures not added up.\n", n)
		return b.String()
	}
	fmt.Fprintf(&b, "Fleet-wide per change at N = %d: W x the host's cost per change (meshd and its agent, TestBench\n", n)
	fmt.Fprintf(&b, "above: %s ms) + the server's; beside it, a whole-list read per change, counted low: W x (the\n", ms(cost.PerChange))
	fmt.Fprintf(&b, "server's cost of one host's list read, measured here: %s ms, + the host's agent's part of one\n", ms(perList))
	fmt.Fprintf(&b, "whole-list read, TestBench above: %s ms; meshd's own read of the list, %s ms with it, left out).\n\n", ms(cost.FullReadAgent), ms(cost.FullRead))
	fmt.Fprintf(&b, "| W | fleet-wide CPU per change, hints | whole list per change (at least) | ratio |\n| --- | --- | --- | --- |\n")
	for _, p := range hints {
		ours := time.Duration(p.W)*cost.PerChange + p.ServerPerChange
		theirs := time.Duration(p.W) * (perList + cost.FullReadAgent)
		fmt.Fprintf(&b, "| %d | %.2f s | %.1f s | x%.0f |\n", p.W, ours.Seconds(), theirs.Seconds(), float64(theirs)/float64(max(ours, 1)))
	}
	b.WriteString("\n")
	return b.String()
}
