package peers

import (
	"maps"
	"reflect"
	"strings"
	"testing"
)

// FuzzDesire feeds hostile catalog entries through validation and conflict
// resolution: it must never panic, never accept an entry that fails its own
// validation, and never accept two peers with the same key or overlapping
// prefixes.
func FuzzDesire(f *testing.F) {
	good := entry(2).Meta
	f.Add(good[MetaNode], good[MetaPublicKey], good[MetaEndpoint], good[MetaPrefix], "", "fdaa:0:2:1::/64", uint64(3))
	f.Add("h3", "AAAA", "[::1]:1", "fdaa::/16", "25", "fdaa:0:1::/48", uint64(0))
	f.Add("", "", "", "", "-1", "", uint64(1))
	f.Add(strings.Repeat("a", 64), good[MetaPublicKey], "1.2.3.4:99999", "::ffff:1.2.3.4/128", "x", "10.0.0.0/8", uint64(7))
	f.Fuzz(func(t *testing.T, node, key, endpoint, prefix, keepalive, prefix2 string, idx uint64) {
		a := Entry{ServiceID: "a", CreateIndex: idx, Meta: map[string]string{
			MetaVersion: "1", MetaNode: node, MetaPublicKey: key, MetaEndpoint: endpoint,
			MetaPrefix: prefix, MetaKeepalive: keepalive,
		}}
		b := entry(2, meta(MetaPrefix, prefix2))
		c := entry(3, meta(MetaPublicKey, key))
		got, rej := Desire([]Entry{a, b, c}, self, rules)
		// Through a cache, twice (the second time from it, with one entry
		// changed in between), the result is the same as without.
		var cache ParseCache
		for i, es := range [][]Entry{{a, b, c}, {a, c}, {a, b, c}} {
			for j := range es {
				es[j].ModifyIndex = uint64(j + 1)
			}
			if i == 2 {
				es[1].Meta = map[string]string{MetaVersion: "9"}
				es[1].ModifyIndex = 99
			}
			cached, crej := cache.Desire(es, self, rules)
			plain, prej := Desire(es, self, rules)
			if !reflect.DeepEqual(cached, plain) || !reflect.DeepEqual(crej, prej) {
				t.Fatalf("round %d: cached Desire differs:\n%+v %+v\n%+v %+v", i, cached, crej, plain, prej)
			}
		}
		if len(got)+len(rej) > 3 {
			t.Fatalf("%d peers and %d rejections from 3 entries", len(got), len(rej))
		}
		for i, p := range got {
			if err := rules.ValidatePrefix(p.Prefix); err != nil {
				t.Errorf("accepted peer %s with invalid prefix: %v", p.Node, err)
			}
			if p.Node == self.Node || p.Prefix.Overlaps(self.Prefix) || p.PublicKey == self.PublicKey {
				t.Errorf("accepted peer %+v collides with self", p)
			}
			for _, q := range got[i+1:] {
				if p.PublicKey == q.PublicKey || p.Prefix.Overlaps(q.Prefix) || p.Node == q.Node {
					t.Errorf("accepted conflicting peers %+v and %+v", p, q)
				}
			}
		}
		for _, r := range rej {
			if r.Reason == "" || strings.Contains(r.Reason, "\n") {
				t.Errorf("rejection reason %q is not one line", r.Reason)
			}
			if len(r.Reason) > 300 {
				t.Errorf("rejection reason is %d characters long", len(r.Reason))
			}
		}
	})
}

// FuzzSignedEntry rewrites the fields of a signed entry: whatever the
// values, it must never panic, and an entry is accepted only when every
// field is what its host signed (node, key, endpoint, prefix, keepalive,
// a gateway's user-link key and endpoint, serial, credential, signature).
func FuzzSignedEntry(f *testing.F) {
	fl := newFleet(&testing.T{}, "fuzz")
	signed := fl.signed(2, 2, 100, func(e *Entry) {})
	orig := signed.Meta
	op, err := ParseEntry(signed, fl.rules())
	if err != nil {
		f.Fatal(err)
	}
	want, err := Claims(op, orig, op.Serial)
	if err != nil {
		f.Fatal(err)
	}
	fields := []string{MetaNode, MetaPublicKey, MetaEndpoint, MetaPrefix, MetaKeepalive, MetaGatewayPublicKey,
		MetaGatewayEndpoint, MetaSerial, MetaCredential, MetaSignature}
	f.Add(uint8(0), orig[MetaNode], false)
	f.Add(uint8(1), mustKey(9).String(), false)
	f.Add(uint8(3), "fdaa::/24", false)
	f.Add(uint8(4), "30", false)
	f.Add(uint8(7), "101", false)
	f.Add(uint8(8), orig[MetaCredential][:40], true)
	f.Add(uint8(9), orig[MetaSignature], true)
	f.Fuzz(func(t *testing.T, which uint8, value string, drop bool) {
		e := signed
		e.Meta = maps.Clone(orig)
		k := fields[int(which)%len(fields)]
		if drop {
			delete(e.Meta, k)
		} else {
			e.Meta[k] = value
		}
		p, err := ParseEntry(e, fl.rules())
		if err != nil {
			if ee, ok := err.(*EntryError); !ok || ee.Msg == "" || strings.Contains(ee.Msg, "\n") {
				t.Fatalf("error %v is not a one-line EntryError", err)
			}
			return
		}
		// Another spelling of the same value (keepalive "0" for none, an
		// IPv4-mapped endpoint) is the same claim; any other change is not.
		got, err := Claims(p, e.Meta, p.Serial)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("accepted an entry whose %s was changed from %q to %q: claims %+v, signed %+v", k, orig[k], e.Meta[k], got, want)
		}
	})
}
