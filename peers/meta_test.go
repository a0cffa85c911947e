package peers

import (
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// TestMetaRoundTrip: what EncodeMeta writes, ParseEntry reads back as the
// same peer, and the Meta has the documented keys and nothing else.
func TestMetaRoundTrip(t *testing.T) {
	key, err := wgtypes.ParseKey("VTB0B5JuBoSXJIbV2MJoprB+nKCjbYAYoQIrZ5T+UAo=")
	if err != nil {
		t.Fatal(err)
	}
	r := Rules{Supernet: netip.MustParsePrefix("fdaa::/16")}
	tests := []struct {
		name  string
		peer  Peer
		extra map[string]string
		want  map[string]string
	}{
		{
			name: "plain",
			peer: Peer{Node: "web-1", PublicKey: key, Endpoint: netip.MustParseAddrPort("192.0.2.10:51820"), Prefix: netip.MustParsePrefix("fdaa:0:1::/48")},
			want: map[string]string{"v": "1", "node": "web-1", "public_key": "VTB0B5JuBoSXJIbV2MJoprB+nKCjbYAYoQIrZ5T+UAo=",
				"endpoint": "192.0.2.10:51820", "prefix": "fdaa:0:1::/48"},
		},
		{
			name:  "keepalive, IPv6 endpoint, a role's keys that cannot override",
			peer:  Peer{Node: "gw", PublicKey: key, Endpoint: netip.MustParseAddrPort("[2001:db8::1]:7"), Prefix: netip.MustParsePrefix("fdaa:0:2::/48"), Keepalive: 25 * time.Second},
			extra: map[string]string{"gateway_pool": "fdaa:0:2:8000::/49", "node": "someone-else"},
			want: map[string]string{"v": "1", "node": "gw", "public_key": "VTB0B5JuBoSXJIbV2MJoprB+nKCjbYAYoQIrZ5T+UAo=",
				"endpoint": "[2001:db8::1]:7", "prefix": "fdaa:0:2::/48", "keepalive": "25", "gateway_pool": "fdaa:0:2:8000::/49"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := EncodeMeta(tt.peer, tt.extra)
			if diff := cmp.Diff(tt.want, m); diff != "" {
				t.Errorf("EncodeMeta (-want +got):\n%s", diff)
			}
			got, err := ParseEntry(Entry{ServiceID: "meshd-" + tt.peer.Node, Meta: m}, r)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.peer, got, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
				cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
				t.Errorf("ParseEntry(EncodeMeta(p)) (-want +got):\n%s", diff)
			}
		})
	}
}

// FuzzMetaRoundTrip: any Meta ParseEntry accepts encodes (EncodeMeta) to a
// Meta that parses to the same peer, and encodes again to itself.
func FuzzMetaRoundTrip(f *testing.F) {
	good := entry(2).Meta
	f.Add(good[MetaNode], good[MetaPublicKey], good[MetaEndpoint], good[MetaPrefix], "")
	f.Add("h3", good[MetaPublicKey], "[::ffff:192.0.2.1]:51820", "fdaa:0:3::/48", "025")
	f.Add("h4", good[MetaPublicKey], "[2001:db8::1]:1", "fdaa:0:4::/64", "0")
	f.Fuzz(func(t *testing.T, node, key, endpoint, prefix, keepalive string) {
		m := map[string]string{MetaVersion: SchemaVersion, MetaNode: node, MetaPublicKey: key,
			MetaEndpoint: endpoint, MetaPrefix: prefix, MetaKeepalive: keepalive}
		p, err := ParseEntry(Entry{Meta: m}, rules)
		if err != nil {
			return
		}
		m2 := EncodeMeta(p, nil)
		p2, err := ParseEntry(Entry{Meta: m2}, rules)
		if err != nil {
			t.Fatalf("EncodeMeta(%+v) = %v does not parse: %v", p, m2, err)
		}
		if p2.Node != p.Node || p2.PublicKey != p.PublicKey || p2.Endpoint != p.Endpoint || p2.Prefix != p.Prefix || p2.Keepalive != p.Keepalive {
			t.Fatalf("round trip changed the peer:\n%+v\n%+v", p, p2)
		}
		if diff := cmp.Diff(m2, EncodeMeta(p2, nil)); diff != "" {
			t.Fatalf("encoding is not stable (-first +second):\n%s", diff)
		}
	})
}
