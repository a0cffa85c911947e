package gateway

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/firewall"
	"meshd.dev/meshd/peers"
)

var (
	t0       = time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	pool     = netip.MustParsePrefix("fdaa:0:1:8000::/49")
	supernet = netip.MustParsePrefix("fdaa::/16")
	netipCmp = cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{}, netip.AddrPort{})
)

func key(n byte) wgtypes.Key {
	var k wgtypes.Key
	for i := range k {
		k[i] = n
	}
	return k
}

func rec(org, name string, n byte, addr string, allow ...string) Record {
	r := Record{Org: org, Name: name, PublicKey: key(n).String(), Address: netip.MustParseAddr(addr), Created: t0}
	if len(allow) == 0 {
		allow = []string{"fdaa::/16"}
	}
	for _, a := range allow {
		r.Allow = append(r.Allow, netip.MustParsePrefix(a))
	}
	return r
}

func pair(r Record, create uint64) Pair {
	return Pair{Key: RecordKey("gw", r.Org, r.Name), Value: r.Encode(), CreateIndex: create, ModifyIndex: create}
}

func userPeer(r Record) peers.Peer {
	return peers.Peer{Node: r.ID(), PublicKey: r.Key(), Prefix: netip.PrefixFrom(r.Address, 128)}
}

func TestDesire(t *testing.T) {
	a := rec("acme", "a", 1, "fdaa:0:1:8000::10")
	b := rec("acme", "b", 2, "fdaa:0:1:8000::11", "fdaa:0:2::/48")
	c := rec("beta", "c", 3, "fdaa:0:1:8000::12")
	expiring := rec("acme", "exp", 4, "fdaa:0:1:8000::13")
	later := t0.Add(time.Hour)
	expiring.Expires = &later
	expired := rec("acme", "old", 5, "fdaa:0:1:8000::14")
	past := t0.Add(-time.Second)
	expired.Expires = &past
	sameAddr := rec("acme", "dup-addr", 6, "fdaa:0:1:8000::10")
	sameKey := rec("acme", "dup-key", 1, "fdaa:0:1:8000::15")
	outside := rec("acme", "outside", 7, "fdaa:0:1::10")
	poolBase := rec("acme", "base", 8, "fdaa:0:1:8000::")
	wideAllow := rec("acme", "wide", 9, "fdaa:0:1:8000::16", "::/0")

	tests := []struct {
		name  string
		pairs []Pair
		want  State
	}{
		{name: "empty"},
		{
			name:  "peers sorted by organization and name",
			pairs: []Pair{pair(c, 3), pair(b, 2), pair(a, 1)},
			want: State{
				Peers:   []peers.Peer{userPeer(a), userPeer(b), userPeer(c)},
				Records: []Stored{{a, 1}, {b, 2}, {c, 3}},
			},
		},
		{
			name:  "expiry: the live one sets the next wake, the past one is to delete",
			pairs: []Pair{pair(expiring, 1), pair(expired, 2)},
			want: State{
				Peers:      []peers.Peer{userPeer(expiring)},
				Records:    []Stored{{expiring, 1}},
				Expired:    []Stored{{expired, 2}},
				NextExpiry: later,
			},
		},
		{
			name:  "conflicts: the older record keeps the address and the key",
			pairs: []Pair{pair(sameAddr, 5), pair(a, 1), pair(sameKey, 6)},
			want: State{
				Peers:   []peers.Peer{userPeer(a)},
				Records: []Stored{{a, 1}},
				Rejected: []Rejection{
					{Key: "meshd/gateways/gw/peers/acme/dup-addr", Reason: "address fdaa:0:1:8000::10 is held by acme/a"},
					{Key: "meshd/gateways/gw/peers/acme/dup-key", Reason: "public key is held by acme/a"},
				},
			},
		},
		{
			name: "invalid records are rejected with a reason",
			pairs: []Pair{
				pair(outside, 1), pair(poolBase, 2), pair(wideAllow, 3),
				{Key: "meshd/gateways/gw/peers/acme/junk", Value: []byte("{"), CreateIndex: 4},
				{Key: "meshd/gateways/gw/peers/acme/moved", Value: a.Encode(), CreateIndex: 5},
			},
			want: State{Rejected: []Rejection{
				{Key: "meshd/gateways/gw/peers/acme/base", Reason: "address fdaa:0:1:8000:: is not a usable address of the pool fdaa:0:1:8000::/49"},
				{Key: "meshd/gateways/gw/peers/acme/junk", Reason: "record meshd/gateways/gw/peers/acme/junk is not a peer record: unexpected EOF"},
				{Key: "meshd/gateways/gw/peers/acme/moved", Reason: `record meshd/gateways/gw/peers/acme/moved names "acme/a", which belongs at meshd/gateways/gw/peers/acme/a`},
				{Key: "meshd/gateways/gw/peers/acme/outside", Reason: "address fdaa:0:1::10 is not a usable address of the pool fdaa:0:1:8000::/49"},
				{Key: "meshd/gateways/gw/peers/acme/wide", Reason: "allow ::/0 is outside the mesh supernet fdaa::/16"},
			}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Desire(NewDecoder("gw"), tt.pairs, pool, supernet, t0)
			if diff := cmp.Diff(tt.want, got, netipCmp, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("Desire (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDecodeRejects(t *testing.T) {
	good := rec("acme", "a", 1, "fdaa:0:1:8000::10")
	tests := []struct {
		name, value, want string
	}{
		{"unknown field", strings.Replace(string(good.Encode()), `"org"`, `"extra":1,"org"`, 1), "unknown field"},
		{"trailing data", string(good.Encode()) + "{}", "after the JSON object"},
		{"bad key", strings.Replace(string(good.Encode()), good.PublicKey, "abc", 1), "not a base64 32-byte key"},
		{"IPv4 address", strings.Replace(string(good.Encode()), "fdaa:0:1:8000::10", "10.0.0.1", 1), "not an IPv6 address"},
		{"no allow list", strings.Replace(string(good.Encode()), `["fdaa::/16"]`, `[]`, 1), "allow has 0 prefixes"},
		{"unmasked allow", strings.Replace(string(good.Encode()), `fdaa::/16`, `fdaa::1/16`, 1), "not a masked IPv6 CIDR"},
		{"no created time", strings.Replace(string(good.Encode()), `"2026-11-22T12:00:00Z"`, `"0001-01-01T00:00:00Z"`, 1), "created is missing"},
		{"huge", strings.Repeat(" ", MaxRecord+1), "more than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode("gw", RecordKey("gw", "acme", "a"), []byte(tt.value))
			if err == nil || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") {
				t.Errorf("Decode: err = %v, want one line containing %q", err, tt.want)
			}
		})
	}
	if _, err := Decode("gw", RecordKey("gw", "acme", "a"), good.Encode()); err != nil {
		t.Errorf("Decode of a good record: %v", err)
	}
}

func TestWGQuick(t *testing.T) {
	priv := key(9)
	r := rec("acme", "laptop", 1, "fdaa:0:1:8000::10", "fdaa:0:2::/48", "fdaa:0:3::/48")
	exp := t0.Add(24 * time.Hour)
	r.Expires = &exp
	gw := Info{Node: "gw1", PublicKey: key(7), Endpoint: netip.MustParseAddrPort("192.0.2.1:51821")}
	want := fmt.Sprintf(`# meshd gateway peer acme/laptop on gateway gw1, created 2026-11-22T12:00:00Z, expires 2026-11-23T12:00:00Z
[Interface]
PrivateKey = %s
Address = fdaa:0:1:8000::10/128

[Peer]
PublicKey = %s
Endpoint = 192.0.2.1:51821
AllowedIPs = fdaa:0:2::/48, fdaa:0:3::/48
PersistentKeepalive = 25
`, priv, key(7))
	if diff := cmp.Diff(want, WGQuick(r, gw, &priv)); diff != "" {
		t.Errorf("WGQuick (-want +got):\n%s", diff)
	}
	// With the user's own key, the private key is theirs to fill in.
	got := WGQuick(r, gw, nil)
	if strings.Contains(got, "\nPrivateKey =") || !strings.Contains(got, "# PrivateKey = <the private key whose public key is "+r.PublicKey+">") {
		t.Errorf("WGQuick without a private key:\n%s", got)
	}
}

func TestParseInfo(t *testing.T) {
	meta := func(mod func(map[string]string)) peers.Entry {
		m := map[string]string{
			"v": "1", "node": "gw1", "public_key": key(1).String(), "endpoint": "192.0.2.1:51820", "prefix": "fdaa:0:1::/48",
			MetaGatewayPublicKey: key(2).String(), MetaGatewayEndpoint: "192.0.2.1:51821", MetaGatewayPool: "fdaa:0:1:8000::/49",
		}
		mod(m)
		return peers.Entry{ServiceID: "meshd-gw1", Meta: m, Tags: []string{Tag}}
	}
	rules := peers.Rules{Supernet: supernet}
	got, _, err := ParseInfo(meta(func(map[string]string) {}), rules)
	if err != nil {
		t.Fatal(err)
	}
	want := Info{Node: "gw1", PublicKey: key(2), Endpoint: netip.MustParseAddrPort("192.0.2.1:51821"), Pool: pool, Prefix: netip.MustParsePrefix("fdaa:0:1::/48")}
	if diff := cmp.Diff(want, got, netipCmp); diff != "" {
		t.Errorf("ParseInfo (-want +got):\n%s", diff)
	}
	for name, tt := range map[string]struct {
		e    peers.Entry
		want string
	}{
		"no tag":           {peers.Entry{ServiceID: "meshd-gw1", Meta: meta(func(map[string]string) {}).Meta}, "not a gateway"},
		"bad gateway key":  {meta(func(m map[string]string) { m[MetaGatewayPublicKey] = "x" }), MetaGatewayPublicKey},
		"pool outside":     {meta(func(m map[string]string) { m[MetaGatewayPool] = "fdaa:0:2::/64" }), "not inside the gateway's prefix"},
		"pool with mesh":   {meta(func(m map[string]string) { m[MetaGatewayPool] = "fdaa:0:1::/64" }), "mesh address"},
		"invalid entry":    {meta(func(m map[string]string) { m["prefix"] = "fdbb::/48" }), "invalid"},
		"missing endpoint": {meta(func(m map[string]string) { delete(m, MetaGatewayEndpoint) }), MetaGatewayEndpoint},
	} {
		if _, _, err := ParseInfo(tt.e, rules); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v, want one mentioning %q", name, err, tt.want)
		}
	}
}

// TestScopeRuleset: allow lists split into what names a gateway host
// (accepted before gateway hosts are dropped) and the rest; a list that
// names part of the pool groups by organization and reaches only that
// organization's peers; other gateways' prefixes are reserved, this one's
// and ones overlapping it left out of them.
func TestScopeRuleset(t *testing.T) {
	own := netip.MustParsePrefix("fdaa:0:1::/48")
	other := netip.MustParsePrefix("fdaa:0:7::/48")
	p := netip.MustParsePrefix
	def1 := rec("acme", "d1", 1, "fdaa:0:1:8000::10")
	def2 := rec("beta", "d2", 2, "fdaa:0:1:8000::11")
	team1 := rec("acme", "t1", 3, "fdaa:0:1:8000::12", "fdaa:0:1:8000::/49", "fdaa::/16")
	team2 := rec("beta", "t2", 4, "fdaa:0:1:8000::13", "fdaa::/16", "fdaa:0:1:8000::/49")
	gwHost := rec("acme", "ops", 5, "fdaa:0:1:8000::14", "fdaa:0:1::1/128", "fdaa:0:7::/64")
	scope := Scope{Pool: pool, Own: own, Others: []netip.Prefix{other, p("fdaa:0:1::/64"), other}}
	recs := []Stored{{def1, 1}, {def2, 2}, {team1, 3}, {team2, 4}, {gwHost, 5}}
	got := scope.Ruleset("wg-gw", "wg0", recs)
	want := firewall.Ruleset{Interface: "wg-gw", MeshInterface: "wg0", Pool: pool, Own: own,
		Reserved: []netip.Prefix{other},
		Rules: []firewall.Rule{
			{Sources: []netip.Addr{def1.Address, def2.Address}, Destinations: []netip.Prefix{supernet}},
			{Sources: []netip.Addr{gwHost.Address}, Named: []netip.Prefix{p("fdaa:0:1::1/128"), p("fdaa:0:7::/64")}},
			{Sources: []netip.Addr{team1.Address}, Named: []netip.Prefix{pool}, Group: "acme",
				Reach: []netip.Addr{def1.Address, team1.Address, gwHost.Address}, Destinations: []netip.Prefix{supernet}},
			{Sources: []netip.Addr{team2.Address}, Named: []netip.Prefix{pool}, Group: "beta",
				Reach: []netip.Addr{def2.Address, team2.Address}, Destinations: []netip.Prefix{supernet}},
		}}
	if diff := cmp.Diff(want, got, netipCmp, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("Ruleset (-want +got):\n%s", diff)
	}
}

func TestHosts(t *testing.T) {
	gw := peers.Peer{Node: "g", Prefix: netip.MustParsePrefix("fdaa:0:7::/48"), Roles: []string{"gateway"}}
	plain := peers.Peer{Node: "h", Prefix: netip.MustParsePrefix("fdaa:0:8::/48")}
	tagged := peers.Peer{Node: "t", Prefix: netip.MustParsePrefix("fdaa:0:9::/48"), Tags: []string{"gateway"}}
	if diff := cmp.Diff([]netip.Prefix{gw.Prefix}, Hosts([]peers.Peer{plain, gw, tagged}), netipCmp); diff != "" {
		t.Errorf("Hosts (-want +got):\n%s", diff)
	}
}
