package gateway

import (
	"fmt"
	"math/big"
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/firewall"
	"meshd.dev/meshd/internal/testlab"
	"meshd.dev/meshd/netlinkx"
	"meshd.dev/meshd/prefixalloc"
)

func TestMain(m *testing.M) { testlab.Main(m) }

// benchPairs returns n valid records with distinct keys and addresses.
func benchPairs(b *testing.B, n int) []Pair {
	b.Helper()
	out := make([]Pair, n)
	for i := range n {
		k, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			b.Fatal(err)
		}
		r := Record{Org: "bench", Name: fmt.Sprintf("p%d", i), PublicKey: k.PublicKey().String(),
			Address: prefixalloc.Nth(pool, 128, big.NewInt(int64(i+1))).Addr(), Allow: []netip.Prefix{supernet}, Created: t0}
		out[i] = Pair{Key: RecordKey("gw", r.Org, r.Name), Value: r.Encode(), CreateIndex: uint64(i + 1), ModifyIndex: uint64(i + 1)}
	}
	return out
}

// BenchmarkApplyOnePeer measures one reconcile of a gateway's user link
// after one new record, on a real userspace WireGuard device that already
// holds n user peers with their routes and firewall entries: decode and
// diff the records, read the device, write the one new peer, its route and
// its firewall element. peers_written/op shows that no other peer is
// rewritten.
//
// The full reconcile reads the device and its routes first, as the gateway
// does at start, every resync_interval and after a failure; the
// incremental one trusts what the last reconcile left, as the gateway does
// for a change from its watch.
func BenchmarkApplyOnePeer(b *testing.B) {
	testlab.RequireRoot(b)
	for _, wg := range testlab.WireGuardModes() {
		for _, mode := range []string{"incremental", "full"} {
			for _, n := range []int{100, 1000, 10000} {
				b.Run(fmt.Sprintf("mode=%s/%s/peers=%d", wg, mode, n), func(b *testing.B) { benchApplyOnePeer(b, wg, n, mode == "full") })
			}
		}
	}
}

var benchRuns int

func benchApplyOnePeer(b *testing.B, wg netlinkx.Mode, n int, full bool) {
	// A name per run: the testing package runs a benchmark more than once,
	// and a removed userspace device takes a moment to go.
	benchRuns++
	name := fmt.Sprintf("gwb%d", benchRuns)
	link := testlab.OpenLink(b, netlinkx.Options{Name: name, MTU: 1420, ListenPort: 51900, Want: wg})
	fw, err := firewall.Open()
	if err != nil {
		b.Fatal(err)
	}
	defer fw.Remove()
	r, err := NewRunner(Options{Node: "gw", Pool: pool, Supernet: supernet, Link: link, Firewall: fw, ResyncInterval: time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	all := benchPairs(b, n+b.N)
	r.records.list(all[:n], 1)
	r.synced = true
	start := time.Now()
	if _, err := r.reconcile(b.Context(), t0); err != nil {
		b.Fatalf("initial sync failed: %v", err)
	}
	initial := time.Since(start)
	writes := link.Writes()
	b.ResetTimer()
	for i := range b.N {
		p := all[n+i]
		r.records.one(p.Key, &p, uint64(2+i))
		if full {
			r.applied = nil
		}
		if _, err := r.reconcile(b.Context(), t0); err != nil {
			b.Fatalf("reconcile failed: %v", err)
		}
	}
	b.StopTimer()
	// One peer write and one route per new peer, nothing else.
	b.ReportMetric(float64(link.Writes()-writes)/float64(b.N), "link-writes/op")
	b.ReportMetric(float64(initial.Milliseconds()), "initial-sync-ms")
	dev, err := netlinkx.ReadDevice(name)
	if err != nil {
		b.Fatal(err)
	}
	if len(dev.Peers) != n+b.N {
		b.Fatalf("device holds %d peers, want %d", len(dev.Peers), n+b.N)
	}
}
