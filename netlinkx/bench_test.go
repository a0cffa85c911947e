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

// BenchmarkApplyOneChanged measures writing one changed peer (a new
// endpoint) to a real userspace WireGuard device that holds n peers with
// their routes: the plan's single upsert, nothing else. writes/op counts
// the kernel writes (1: the peer; its route is unchanged).
func BenchmarkApplyOneChanged(b *testing.B) {
	testlab.RequireRoot(b)
	for _, n := range []int{100, 1000, 10000} {
		b.Run(fmt.Sprintf("peers=%d", n), func(b *testing.B) {
			// A name per run: the testing package runs a benchmark more
			// than once, and a removed userspace device takes a moment to go.
			benchRuns++
			name := fmt.Sprintf("wgb%d", benchRuns)
			l := testlab.OpenLink(b, netlinkx.Options{Name: name, MTU: 1420, ListenPort: 51830,
				Address: netip.MustParseAddr("fdaa:0:1::1")})
			if err := l.Ensure(); err != nil {
				b.Fatal(err)
			}
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
		})
	}
}
