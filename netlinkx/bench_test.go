package netlinkx_test

import (
	"fmt"
	"math/big"
	"net/netip"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/internal/testlab"
	"meshd.dev/meshd/netlinkx"
	"meshd.dev/meshd/peers"
	"meshd.dev/meshd/prefixalloc"
)

var benchRuns int

// benchLink makes a fresh link of the given mode. A name per run: the
// testing package runs a benchmark more than once, and a removed userspace
// device takes a moment to go.
func benchLink(b *testing.B, mode netlinkx.Mode) *netlinkx.Link {
	b.Helper()
	benchRuns++
	l := testlab.OpenLink(b, netlinkx.Options{Name: fmt.Sprintf("wgb%d", benchRuns), MTU: 1420, ListenPort: 51830,
		Address: netip.MustParseAddr("fdaa:0:1::1"), Want: mode})
	if err := l.Ensure(); err != nil {
		b.Fatal(err)
	}
	if l.Mode() != mode {
		b.Fatalf("link mode %q, want %q", l.Mode(), mode)
	}
	return l
}

// benchPeers makes n peers with distinct keys, endpoints and prefixes.
func benchPeers(b *testing.B, n int) []peers.Peer {
	b.Helper()
	supernet := netip.MustParsePrefix("fdaa::/16")
	ps := make([]peers.Peer, n)
	for i := range ps {
		k, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			b.Fatal(err)
		}
		ps[i] = peers.Peer{Node: fmt.Sprintf("n%d", i), PublicKey: k.PublicKey(),
			Endpoint: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}), uint16(1000+i%50000)),
			Prefix:   prefixalloc.Nth(supernet, 48, big.NewInt(int64(i+2)))}
	}
	return ps
}

// BenchmarkInitialSync measures a fresh host's first apply: n peers and
// their routes written to an empty link (the plan a first catalog read
// gives), per mode.
func BenchmarkInitialSync(b *testing.B) {
	testlab.RequireRoot(b)
	for _, mode := range testlab.WireGuardModes() {
		b.Run(fmt.Sprintf("mode=%s/peers=10000", mode), func(b *testing.B) {
			ps := benchPeers(b, 10000)
			full := peers.Diff(ps, peers.Observed{}, peers.Removal{})
			for range b.N {
				b.StopTimer()
				l := benchLink(b, mode)
				b.StartTimer()
				if err := l.Apply(full); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				obs, err := l.Observe()
				if err != nil || len(obs.Peers) != len(ps) || len(obs.Routes) != len(ps) {
					b.Fatalf("device holds %d peers and %d routes (%v), want %d", len(obs.Peers), len(obs.Routes), err, len(ps))
				}
				if err := l.Remove(); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}

// BenchmarkApplyOneChanged measures writing one changed peer (a new
// endpoint) to a real WireGuard device (per mode) that holds n peers with
// their routes: the plan's single upsert, nothing else. writes/op counts
// the kernel writes (1: the peer; its route is unchanged).
func BenchmarkApplyOneChanged(b *testing.B) {
	testlab.RequireRoot(b)
	for _, mode := range testlab.WireGuardModes() {
		for _, n := range []int{100, 1000, 10000} {
			b.Run(fmt.Sprintf("mode=%s/peers=%d", mode, n), func(b *testing.B) {
				applyOneChanged(b, mode, n)
			})
		}
	}
}

func applyOneChanged(b *testing.B, mode netlinkx.Mode, n int) {
	l := benchLink(b, mode)
	ps := benchPeers(b, n)
	full := peers.Diff(ps, peers.Observed{}, peers.Removal{})
	if err := l.Apply(full); err != nil {
		b.Fatal(err)
	}
	writes := l.Writes()
	b.ResetTimer()
	for i := range b.N {
		p := &ps[i%n]
		p.Endpoint = netip.AddrPortFrom(p.Endpoint.Addr(), p.Endpoint.Port()%60000+1)
		if err := l.Apply(peers.Plan{Upsert: []peers.Peer{*p}}); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(l.Writes()-writes)/float64(b.N), "writes/op")
	obs, err := l.Observe()
	if err != nil || len(obs.Peers) != n || len(obs.Routes) != n {
		b.Fatalf("device holds %d peers and %d routes (%v), want %d", len(obs.Peers), len(obs.Routes), err, n)
	}
}
