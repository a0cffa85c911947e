package gateway

import (
	"net/netip"
	"testing"
)

// FuzzDesire feeds arbitrary KV values to the gateway's desired state: it
// must never panic, every pair is either a peer, expired or rejected, and
// no two peers share an address or a key.
func FuzzDesire(f *testing.F) {
	good := rec("acme", "a", 1, "fdaa:0:1:8000::10")
	f.Add("acme/a", good.Encode(), "acme/b", []byte(`{"org":"acme","name":"b"}`))
	f.Add("acme/a", good.Encode(), "acme/a2", good.Encode())
	f.Add("x", []byte("{"), "acme/z", []byte(`{"org":"acme","name":"z","public_key":"`+key(3).String()+`","address":"fdaa:0:1:8000::1","allow":["fdaa::/16"],"created":"2026-01-01T00:00:00Z","expires":"2020-01-01T00:00:00Z"}`))
	f.Fuzz(func(t *testing.T, k1 string, v1 []byte, k2 string, v2 []byte) {
		pairs := []Pair{
			{Key: PeersKey("gw") + k1, Value: v1, CreateIndex: 1},
			{Key: PeersKey("gw") + k2, Value: v2, CreateIndex: 2},
		}
		st := Desire(NewDecoder("gw"), pairs, pool, supernet, t0)
		if n := len(st.Peers) + len(st.Expired) + len(st.Rejected); n != len(pairs) {
			t.Fatalf("%d pairs became %d peers + %d expired + %d rejected", len(pairs), len(st.Peers), len(st.Expired), len(st.Rejected))
		}
		addrs := map[netip.Addr]bool{}
		for _, p := range st.Peers {
			if addrs[p.Prefix.Addr()] {
				t.Fatalf("address %s twice", p.Prefix.Addr())
			}
			addrs[p.Prefix.Addr()] = true
			if !pool.Contains(p.Prefix.Addr()) {
				t.Fatalf("peer address %s outside the pool", p.Prefix.Addr())
			}
		}
		if len(st.Peers) == 2 && st.Peers[0].PublicKey == st.Peers[1].PublicKey {
			t.Fatal("two peers share a key")
		}
	})
}
