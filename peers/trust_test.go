package peers

import (
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/trust"
)

// fleet is an authority and the identities it vouches for, by node.
type fleet struct {
	t       *testing.T
	a       trust.AuthorityKey
	signers map[string]*trust.Signer
}

func newFleet(t *testing.T, seed string) *fleet {
	a, err := trust.AuthorityFromSeed([]byte(fmt.Sprintf("%-32s", seed)))
	if err != nil {
		t.Fatal(err)
	}
	return &fleet{t: t, a: a, signers: map[string]*trust.Signer{}}
}

func (f *fleet) rules() Rules {
	return Rules{Supernet: netip.MustParsePrefix("fdaa::/16"), Trust: &Trust{Authorities: []ed25519.PublicKey{f.a.Public()}}}
}

// signer is node's identity, with a credential for prefix valid until
// notAfter, made on first use.
func (f *fleet) signer(node, prefix string, notAfter time.Time, roles ...string) *trust.Signer {
	if s, ok := f.signers[node]; ok {
		return s
	}
	seed := make([]byte, 32)
	copy(seed, node)
	id := ed25519.NewKeyFromSeed(seed)
	c, err := f.a.Issue(trust.Credential{Node: node, Prefix: netip.MustParsePrefix(prefix), Roles: roles,
		Identity: id.Public().(ed25519.PublicKey), NotAfter: notAfter})
	if err != nil {
		f.t.Fatal(err)
	}
	s, err := trust.NewSigner(seed, c)
	if err != nil {
		f.t.Fatal(err)
	}
	f.signers[node] = s
	return s
}

// signed is entry(n) with key seed k, signed by node hn's identity under
// serial.
func (f *fleet) signed(n int, k byte, serial uint64, mod ...func(*Entry)) Entry {
	e := entry(n)
	e.Meta[MetaPublicKey] = mustKey(k).String()
	e.ModifyIndex = serial
	s := f.signer(e.Meta[MetaNode], e.Meta[MetaPrefix], time.Unix(2_000_000_000, 0))
	p, err := ParseEntry(e, Rules{Supernet: netip.MustParsePrefix("fdaa::/16")})
	if err != nil {
		f.t.Fatal(err)
	}
	if e.Meta, err = Sign(e.Meta, p, s, serial); err != nil {
		f.t.Fatal(err)
	}
	for _, m := range mod {
		m(&e)
	}
	return e
}

// TestTrustRejects: every way an entry can fail to prove itself is a
// rejection with its code, and a signed entry is a peer.
func TestTrustRejects(t *testing.T) {
	f := newFleet(t, "authority")
	stranger := newFleet(t, "stranger")
	good := f.signed(2, 2, 100)
	if _, err := ParseEntry(good, f.rules()); err != nil {
		t.Fatalf("a signed entry: %v", err)
	}
	withMeta := func(k, v string) func(*Entry) { return func(e *Entry) { e.Meta[k] = v } }
	tests := map[string]struct {
		e    Entry
		code string
	}{
		"unsigned":              {entry(2), "credential"},
		"key rewritten":         {f.signed(2, 2, 100, withMeta(MetaPublicKey, mustKey(9).String())), "signature"},
		"endpoint rewritten":    {f.signed(2, 2, 100, withMeta(MetaEndpoint, "198.18.0.99:51820")), "signature"},
		"serial rewritten":      {f.signed(2, 2, 100, withMeta(MetaSerial, "101")), "signature"},
		"keepalive added":       {f.signed(2, 2, 100, withMeta(MetaKeepalive, "30")), "signature"},
		"gateway key added":     {f.signed(2, 2, 100, withMeta(MetaGatewayPublicKey, mustKey(7).String())), "signature"},
		"unknown authority":     {stranger.signed(2, 2, 100), "untrusted"},
		"wider prefix":          {f.signed(2, 2, 100, withMeta(MetaPrefix, "fdaa::/32")), "credential"},
		"another node's":        {f.signed(2, 2, 100, withMeta(MetaNode, "h3")), "credential"},
		"role not credentialed": {f.signed(2, 2, 100, func(e *Entry) { e.Tags = []string{"gateway"} }), "role"},
		"credential garbled":    {f.signed(2, 2, 100, withMeta(MetaCredential, "AAAA")), "credential"},
		"signature garbled":     {f.signed(2, 2, 100, withMeta(MetaSignature, "AAAA")), "signature"},
		"serial not a number":   {f.signed(2, 2, 100, withMeta(MetaSerial, "x")), "serial"},
		"loopback endpoint":     {entry(2, func(e *Entry) { e.Meta[MetaEndpoint] = "127.0.0.1:51820" }), "endpoint"},
		"mesh endpoint":         {entry(2, func(e *Entry) { e.Meta[MetaEndpoint] = "[fdaa:0:9::1]:51820" }), "endpoint"},
		"link-local endpoint":   {entry(2, func(e *Entry) { e.Meta[MetaEndpoint] = "[fe80::1]:51820" }), "endpoint"},
		"keepalive too short":   {entry(2, func(e *Entry) { e.Meta[MetaKeepalive] = "1" }), "keepalive"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := ParseEntry(tt.e, f.rules())
			ee, ok := err.(*EntryError)
			if !ok || ee.Field != tt.code {
				t.Errorf("ParseEntry: %v, want a rejection coded %q", err, tt.code)
			}
		})
	}
}

// plan runs pl over entries at now and commits.
func plan(t *testing.T, pl *Planner, entries []Entry, now time.Time) Result {
	t.Helper()
	res, err := pl.Plan(entries, Self{Node: "self"}, func() (Observed, error) { return Observed{}, nil }, now)
	if err != nil {
		t.Fatal(err)
	}
	pl.Commit(res)
	return res
}

func keysOf(ps []Peer) map[string]wgtypes.Key {
	m := map[string]wgtypes.Key{}
	for _, p := range ps {
		m[p.Node] = p.PublicKey
	}
	return m
}

func codes(rs []Rejection) map[string]string {
	m := map[string]string{}
	for _, r := range rs {
		m[r.ServiceID] = r.Code
	}
	return m
}

// TestTrustPlanner: a rewritten entry leaves the node's peer as it was, a
// replay of an older serial is refused (also by a planner restored from
// saved serials), and an expired or revoked node is removed at once,
// breaker and grace notwithstanding.
func TestTrustPlanner(t *testing.T) {
	f := newFleet(t, "authority")
	now := time.Unix(1_900_000_000, 0)
	pl := &Planner{Rules: f.rules(), Grace: time.Hour, MaxFraction: 0.1, Floor: 0}
	h2, h3 := f.signed(2, 2, 100), f.signed(3, 3, 100)
	res := plan(t, pl, []Entry{h2, h3}, now)
	if diff := cmp.Diff(map[string]wgtypes.Key{"h2": mustKey(2), "h3": mustKey(3)}, keysOf(res.Desired)); diff != "" {
		t.Fatalf("peers (-want +got):\n%s", diff)
	}

	// Someone rewrites h2's instance with another key: rejected, h2 stays.
	forged := f.signed(2, 2, 100, func(e *Entry) { e.Meta[MetaPublicKey] = mustKey(9).String(); e.ModifyIndex = 101 })
	res = plan(t, pl, []Entry{forged, h3}, now.Add(time.Second))
	if keysOf(res.Desired)["h2"] != mustKey(2) || codes(res.Rejected)["meshd-h2"] != "signature" || !res.Plan.Empty() {
		t.Errorf("after a rewrite: peers %v, rejections %v, plan %+v; want h2 kept with its key, the rewrite rejected, no change", keysOf(res.Desired), res.Rejected, res.Plan)
	}

	// h2 rotates its key (serial 200); then its old entry is replayed.
	rotated := f.signed(2, 4, 200)
	res = plan(t, pl, []Entry{rotated, h3}, now.Add(2*time.Second))
	if keysOf(res.Desired)["h2"] != mustKey(4) {
		t.Fatalf("the rotation was not applied: %v", keysOf(res.Desired))
	}
	replay := h2
	replay.ModifyIndex = 300
	res = plan(t, pl, []Entry{replay, h3}, now.Add(3*time.Second))
	if keysOf(res.Desired)["h2"] != mustKey(4) || codes(res.Rejected)["meshd-h2"] != CodeReplay {
		t.Errorf("after a replay: peers %v, rejections %v; want h2 kept with its new key, the replay refused", keysOf(res.Desired), res.Rejected)
	}
	mem, changed := pl.Memory()
	if !changed || mem.Serials["h2"] != 200 {
		t.Errorf("serials %v (changed %v), want h2 at 200", mem.Serials, changed)
	}
	// A planner restarted with the saved serials refuses the replay too.
	restarted := &Planner{Rules: f.rules(), Grace: time.Hour}
	restarted.Restore(mem)
	res = plan(t, restarted, []Entry{replay, h3}, now.Add(4*time.Second))
	if _, ok := keysOf(res.Desired)["h2"]; ok || codes(res.Rejected)["meshd-h2"] != CodeReplay {
		t.Errorf("restarted planner: peers %v, rejections %v; want the replay refused", keysOf(res.Desired), res.Rejected)
	}

	// The authority revokes h3: removed now, though the breaker (10%)
	// would hold one removal of two peers and the grace is an hour.
	pl.Revoke(Revoked{Nodes: map[string]bool{"h3": true}})
	res = plan(t, pl, []Entry{rotated, h3}, now.Add(5*time.Second))
	if codes(res.Rejected)["meshd-h3"] != CodeRevoked || len(res.Plan.Remove) != 1 || res.Plan.Remove[0] != mustKey(3) {
		t.Errorf("after h3's revocation: rejections %v, removals %v; want h3 revoked and removed", res.Rejected, res.Plan.Remove)
	}
}

// TestTrustExpiry: a credential that expires removes its peer at once
// at the next plan after its not-after, without any catalog change.
func TestTrustExpiry(t *testing.T) {
	f := newFleet(t, "authority")
	now := time.Unix(1_900_000_000, 0)
	soon := now.Add(time.Minute)
	f.signer("h5", "fdaa:0:5::/48", soon)
	h5, h6 := f.signed(5, 5, 1), f.signed(6, 6, 1)
	pl := &Planner{Rules: f.rules(), Grace: time.Hour, MaxFraction: 0.1}
	res := plan(t, pl, []Entry{h5, h6}, now)
	if len(res.Desired) != 2 || !pl.NextExpiry().Equal(soon) {
		t.Fatalf("peers %v, next expiry %s; want both, %s", keysOf(res.Desired), pl.NextExpiry(), soon)
	}
	res = plan(t, pl, []Entry{h5, h6}, soon)
	if codes(res.Rejected)["meshd-h5"] != CodeExpired || len(res.Plan.Remove) != 1 || res.Plan.Remove[0] != mustKey(5) {
		t.Errorf("at expiry: rejections %v, removals %v; want h5 expired and removed", res.Rejected, res.Plan.Remove)
	}
	if !strings.Contains(fmt.Sprint(res.Rejected), "expired") {
		t.Errorf("reason does not say expired: %v", res.Rejected)
	}
}

// TestMemoryRoundTrip: what a planner keeps across restarts (serials, the
// breaker's window) comes back whole in a new planner, through JSON.
func TestMemoryRoundTrip(t *testing.T) {
	now := time.Unix(1_900_000_000, 0)
	pl := &Planner{}
	pl.trust.serials = map[string]uint64{"h2": 7}
	pl.window.seen(now.Add(-time.Minute), 40)
	pl.window.seen(now, 30)
	pl.window.removed = []event{{now.Add(-30 * time.Second), 3}, {now, 2}}
	pl.window.changed = true
	m, changed := pl.Memory()
	if !changed {
		t.Error("Memory after a removal: not changed")
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var back Memory
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	restored := &Planner{}
	restored.Restore(back)
	restored.window.prune(now)
	pl.window.prune(now)
	gotRemoved, gotPeak := restored.window.recent()
	wantRemoved, wantPeak := pl.window.recent()
	if gotRemoved != wantRemoved || gotPeak != wantPeak || gotRemoved != 5 || gotPeak != 40 {
		t.Errorf("restored window: %d removed, peak %d; want %d, %d (5, 40)", gotRemoved, gotPeak, wantRemoved, wantPeak)
	}
	if restored.trust.serials["h2"] != 7 {
		t.Errorf("restored serials %v", restored.trust.serials)
	}
	if _, changed := pl.Memory(); changed {
		t.Error("Memory called twice: changed the second time")
	}
}
