package peers

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// mustKey returns a distinct, valid public key for each seed.
func mustKey(seed byte) wgtypes.Key {
	var k wgtypes.Key
	for i := range k {
		k[i] = seed
	}
	return k
}

// netipOpts lets cmp compare netip values, which have unexported fields.
var netipOpts = cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{}, netip.AddrPort{})

var rules = Rules{Supernet: netip.MustParsePrefix("fdaa::/16")}

// entry builds a well-formed catalog entry for node n (1..250).
func entry(n int, mod ...func(*Entry)) Entry {
	e := Entry{
		ServiceID:   fmt.Sprintf("meshd-h%d", n),
		CreateIndex: uint64(10 + n),
		Health:      HealthPassing,
		Meta: map[string]string{
			MetaVersion:   "1",
			MetaNode:      fmt.Sprintf("h%d", n),
			MetaPublicKey: mustKey(byte(n)).String(),
			MetaEndpoint:  fmt.Sprintf("198.18.0.%d:51820", n),
			MetaPrefix:    fmt.Sprintf("fdaa:0:%x::/48", n),
		},
	}
	for _, m := range mod {
		m(&e)
	}
	return e
}

func peer(n int) Peer {
	return Peer{
		Node:        fmt.Sprintf("h%d", n),
		PublicKey:   mustKey(byte(n)),
		Endpoint:    netip.MustParseAddrPort(fmt.Sprintf("198.18.0.%d:51820", n)),
		Prefix:      netip.MustParsePrefix(fmt.Sprintf("fdaa:0:%x::/48", n)),
		Health:      HealthPassing,
		CreateIndex: uint64(10 + n),
	}
}

func kernelPeer(n int) KernelPeer {
	p := peer(n)
	return KernelPeer{PublicKey: p.PublicKey, Endpoint: p.Endpoint, AllowedIPs: []netip.Prefix{p.Prefix}}
}

func meta(k, v string) func(*Entry) { return func(e *Entry) { e.Meta[k] = v } }

var self = Self{Node: "h1", PublicKey: mustKey(1), Prefix: netip.MustParsePrefix("fdaa:0:1::/48")}

func TestDesire(t *testing.T) {
	tests := []struct {
		name    string
		entries []Entry
		want    []Peer
		reasons map[string]string // service ID -> substring of the reason
	}{
		{
			name:    "own entry is not a peer",
			entries: []Entry{entry(1), entry(2), entry(3)},
			want:    []Peer{peer(2), peer(3)},
		},
		{
			name: "keepalive and tags",
			entries: []Entry{entry(2, meta(MetaKeepalive, "25"), func(e *Entry) {
				e.Tags = []string{"gateway"}
			})},
			want: []Peer{func() Peer { p := peer(2); p.Keepalive = 25 * time.Second; p.Tags = []string{"gateway"}; return p }()},
		},
		{
			name: "invalid fields are rejected, the rest applies",
			entries: []Entry{
				entry(2),
				entry(3, meta(MetaPublicKey, "AAAA")),
				entry(4, meta(MetaPrefix, "10.0.0.0/8")),
				entry(5, meta(MetaPrefix, "fdbb:0:5::/48")),
				entry(6, meta(MetaEndpoint, "example.com:51820")),
				entry(7, meta(MetaNode, "Not_A_Label")),
				entry(8, meta(MetaVersion, "2")),
				entry(9, meta(MetaPrefix, "fdaa:0:9::1/48")),
				entry(10, meta(MetaPrefix, "fd00::/12")),
				entry(11, meta(MetaKeepalive, "-1")),
				entry(12, meta("junk", strings.Repeat("x", 513))),
				entry(13, meta(MetaEndpoint, "198.18.0.13:0")),
				entry(14, meta(MetaPrefix, "fdaa:0:e::/124")),
			},
			want: []Peer{peer(2)},
			reasons: map[string]string{
				"meshd-h3":  "public_key",
				"meshd-h4":  "not IPv6",
				"meshd-h5":  "outside the mesh supernet",
				"meshd-h6":  "endpoint",
				"meshd-h7":  "not a DNS label",
				"meshd-h8":  "meta v",
				"meshd-h9":  "host bits",
				"meshd-h10": "outside the mesh supernet",
				"meshd-h11": "keepalive",
				"meshd-h12": "more than 512",
				"meshd-h13": "endpoint",
				"meshd-h14": "length /124",
			},
		},
		{
			name: "duplicate key: older registration wins",
			entries: []Entry{
				entry(3, meta(MetaPublicKey, mustKey(2).String()), func(e *Entry) { e.CreateIndex = 99 }),
				entry(2),
			},
			want:    []Peer{peer(2)},
			reasons: map[string]string{"meshd-h3": "already used by node h2"},
		},
		{
			name: "overlapping prefix: older registration wins, either nesting",
			entries: []Entry{
				entry(2),
				entry(3, meta(MetaPrefix, "fdaa:0:2:1::/64")),
				entry(4, meta(MetaPrefix, "fdaa:0:2::/47"), func(e *Entry) { e.CreateIndex = 100 }),
				entry(5, meta(MetaPrefix, "fdaa:0:2::/48")),
			},
			want: []Peer{peer(2)},
			reasons: map[string]string{
				"meshd-h3": "overlaps fdaa:0:2::/48 of node h2",
				"meshd-h4": "overlaps fdaa:0:2::/48 of node h2",
				"meshd-h5": "overlaps fdaa:0:2::/48 of node h2",
			},
		},
		{
			name: "younger wide prefix loses to older narrow one",
			entries: []Entry{
				entry(4, meta(MetaPrefix, "fdaa:0:2::/47"), func(e *Entry) { e.CreateIndex = 1 }),
				entry(2),
			},
			want: []Peer{func() Peer {
				p := peer(4)
				p.Prefix = netip.MustParsePrefix("fdaa:0:2::/47")
				p.CreateIndex = 1
				return p
			}()},
			reasons: map[string]string{"meshd-h2": "overlaps fdaa:0:2::/47 of node h4"},
		},
		{
			name: "prefix overlapping ours is always rejected, even when older",
			entries: []Entry{
				entry(2, meta(MetaPrefix, "fdaa:0:1:5::/64"), func(e *Entry) { e.CreateIndex = 1 }),
				entry(3),
			},
			want:    []Peer{peer(3)},
			reasons: map[string]string{"meshd-h2": "overlaps this host's prefix"},
		},
		{
			name:    "another node claiming our key",
			entries: []Entry{entry(2, meta(MetaPublicKey, mustKey(1).String()))},
			reasons: map[string]string{"meshd-h2": "this host's own key"},
		},
		{
			name: "same node registered twice",
			entries: []Entry{
				entry(2),
				entry(3, meta(MetaNode, "h2"), func(e *Entry) { e.CreateIndex = 50 }),
			},
			want:    []Peer{peer(2)},
			reasons: map[string]string{"meshd-h3": "node h2 is already registered by meshd-h2"},
		},
		{
			name:    "our own broken entry is neither peer nor rejection",
			entries: []Entry{entry(1, meta(MetaPublicKey, "x"))},
		},
		{name: "empty catalog"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, rej := Desire(tt.entries, self, rules)
			if diff := cmp.Diff(tt.want, got, netipOpts); diff != "" {
				t.Errorf("Desire peers (-want +got):\n%s", diff)
			}
			gotReasons := map[string]string{}
			for _, r := range rej {
				gotReasons[r.ServiceID] = r.Reason
				if !slices.Contains([]string{"meta", "tags", CodeMaxPeers, "version", "node", "public_key", "endpoint", "prefix", "keepalive",
					CodeDuplicateNode, CodeDuplicateKey, CodeOwnKey, CodeOverlapsSelf, CodeOverlap}, r.Code) {
					t.Errorf("rejection %s has code %q, not one of the fixed set", r.ServiceID, r.Code)
				}
			}
			if len(gotReasons) != len(tt.reasons) {
				t.Errorf("rejections = %v, want %d of them (%v)", gotReasons, len(tt.reasons), tt.reasons)
			}
			for id, sub := range tt.reasons {
				if !strings.Contains(gotReasons[id], sub) {
					t.Errorf("rejection of %s = %q, want it to contain %q", id, gotReasons[id], sub)
				}
			}
		})
	}
}

func TestDesireIsDeterministic(t *testing.T) {
	a := []Entry{entry(2), entry(3), entry(4, meta(MetaPrefix, "fdaa:0:3::/48"))}
	b := []Entry{a[2], a[0], a[1]}
	pa, ra := Desire(a, self, rules)
	pb, rb := Desire(b, self, rules)
	if diff := cmp.Diff(pa, pb, netipOpts); diff != "" {
		t.Errorf("peers depend on entry order (-a +b):\n%s", diff)
	}
	if diff := cmp.Diff(ra, rb); diff != "" {
		t.Errorf("rejections depend on entry order (-a +b):\n%s", diff)
	}
}

func TestDiff(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	grace := time.Minute
	moved := peer(3)
	moved.Endpoint = netip.MustParseAddrPort("198.18.1.3:51820")
	rotated := peer(3)
	rotated.PublicKey = mustKey(33)
	renumbered := peer(3)
	renumbered.Prefix = netip.MustParsePrefix("fdaa:0:33::/48")
	roaming := peer(3)
	roaming.Endpoint = netip.AddrPort{}
	keepalive := peer(3)
	keepalive.Keepalive = 25 * time.Second
	p2, p3 := peer(2), peer(3)
	routes := func(ns ...int) []netip.Prefix {
		var out []netip.Prefix
		for _, n := range ns {
			out = append(out, peer(n).Prefix)
		}
		return out
	}

	tests := []struct {
		name    string
		desired []Peer
		obs     Observed
		absent  map[wgtypes.Key]time.Time
		want    Plan
	}{
		{
			name:    "converged: nothing to do",
			desired: []Peer{p2, p3},
			obs:     Observed{Peers: []KernelPeer{kernelPeer(2), kernelPeer(3)}, Routes: routes(2, 3)},
			want:    Plan{},
		},
		{
			name:    "empty kernel: add everything",
			desired: []Peer{p2, p3},
			want:    Plan{Upsert: []Peer{p2, p3}, AddRoutes: routes(2, 3)},
		},
		{
			name:    "endpoint change rewrites that peer only",
			desired: []Peer{p2, moved},
			obs:     Observed{Peers: []KernelPeer{kernelPeer(2), kernelPeer(3)}, Routes: routes(2, 3)},
			want:    Plan{Upsert: []Peer{moved}},
		},
		{
			name:    "a peer without an endpoint keeps the one the kernel learnt",
			desired: []Peer{p2, roaming},
			obs:     Observed{Peers: []KernelPeer{kernelPeer(2), kernelPeer(3)}, Routes: routes(2, 3)},
			want:    Plan{},
		},
		{
			name:    "keepalive change rewrites that peer",
			desired: []Peer{p2, keepalive},
			obs:     Observed{Peers: []KernelPeer{kernelPeer(2), kernelPeer(3)}, Routes: routes(2, 3)},
			want:    Plan{Upsert: []Peer{keepalive}},
		},
		{
			name:    "key rotation: new key added, old one removed at once",
			desired: []Peer{p2, rotated},
			obs:     Observed{Peers: []KernelPeer{kernelPeer(2), kernelPeer(3)}, Routes: routes(2, 3)},
			absent:  map[wgtypes.Key]time.Time{p3.PublicKey: t0},
			want:    Plan{Upsert: []Peer{rotated}, Remove: []wgtypes.Key{p3.PublicKey}},
		},
		{
			name:    "prefix change: route added before the old one goes",
			desired: []Peer{p2, renumbered},
			obs:     Observed{Peers: []KernelPeer{kernelPeer(2), kernelPeer(3)}, Routes: routes(2, 3)},
			want: Plan{
				Upsert:    []Peer{renumbered},
				AddRoutes: []netip.Prefix{renumbered.Prefix},
				DelRoutes: routes(3),
			},
		},
		{
			name:    "gone within grace: held with its route",
			desired: []Peer{p2},
			obs:     Observed{Peers: []KernelPeer{kernelPeer(2), kernelPeer(3)}, Routes: routes(2, 3)},
			absent:  map[wgtypes.Key]time.Time{p3.PublicKey: t0.Add(-30 * time.Second)},
			want:    Plan{Held: []Held{{PublicKey: p3.PublicKey, Until: t0.Add(30 * time.Second)}}, Pending: 1},
		},
		{
			name:    "gone past grace: peer and route removed",
			desired: []Peer{p2},
			obs:     Observed{Peers: []KernelPeer{kernelPeer(2), kernelPeer(3)}, Routes: routes(2, 3)},
			absent:  map[wgtypes.Key]time.Time{p3.PublicKey: t0.Add(-time.Minute)},
			want:    Plan{Remove: []wgtypes.Key{p3.PublicKey}, DelRoutes: routes(3), Pending: 1, Expired: 1},
		},
		{
			name:    "unknown kernel peer gets the full grace",
			desired: []Peer{p2},
			obs:     Observed{Peers: []KernelPeer{kernelPeer(2), kernelPeer(3)}, Routes: routes(2, 3)},
			want:    Plan{Held: []Held{{PublicKey: p3.PublicKey, Until: t0.Add(grace)}}, Pending: 1},
		},
		{
			name:    "kernel peer without allowed IPs goes at once",
			desired: []Peer{p2},
			obs: Observed{
				Peers:  []KernelPeer{kernelPeer(2), {PublicKey: p3.PublicKey}},
				Routes: routes(2),
			},
			want: Plan{Remove: []wgtypes.Key{p3.PublicKey}},
		},
		{
			name:    "stale tagged route without a peer is removed, missing one added",
			desired: []Peer{p2},
			obs:     Observed{Peers: []KernelPeer{kernelPeer(2)}, Routes: routes(9)},
			want:    Plan{AddRoutes: routes(2), DelRoutes: routes(9)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Diff(tt.desired, tt.obs, Removal{Grace: grace, AbsentSince: tt.absent, Now: t0})
			if diff := cmp.Diff(tt.want, got, netipOpts); diff != "" {
				t.Errorf("Diff (-want +got):\n%s", diff)
			}
			if got.Empty() != (len(tt.want.Upsert)+len(tt.want.Remove)+len(tt.want.AddRoutes)+len(tt.want.DelRoutes) == 0) {
				t.Errorf("Empty() = %v for %+v", got.Empty(), got)
			}
		})
	}
}

func TestTrack(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	t1 := t0.Add(time.Minute)
	prev := map[wgtypes.Key]time.Time{mustKey(2): t0, mustKey(3): t0, mustKey(9): t0}
	obs := Observed{Peers: []KernelPeer{kernelPeer(2), kernelPeer(3), kernelPeer(4)}}
	got := Track(prev, []Peer{peer(2)}, obs, t1)
	want := map[wgtypes.Key]time.Time{
		// mustKey(2) is desired again: forgotten.
		mustKey(3): t0, // still absent: keeps when it was first noticed
		mustKey(4): t1, // newly absent kernel peer: grace starts now
		// mustKey(9) is gone from the kernel: forgotten.
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Track (-want +got):\n%s", diff)
	}
}

func TestPlanNextDeadline(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	p := Plan{Held: []Held{{Until: t0.Add(2 * time.Second)}, {Until: t0.Add(time.Second)}}}
	if got := p.NextDeadline(); !got.Equal(t0.Add(time.Second)) {
		t.Errorf("NextDeadline = %v, want %v", got, t0.Add(time.Second))
	}
	if got := (Plan{}).NextDeadline(); !got.IsZero() {
		t.Errorf("NextDeadline of an empty plan = %v, want zero", got)
	}
}

func TestBreaker(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	past := t0.Add(-time.Hour) // every absent peer is past its grace
	var all []Peer
	var obs Observed
	for n := 2; n <= 11; n++ {
		all = append(all, peer(n))
		obs.Peers = append(obs.Peers, kernelPeer(n))
		obs.Routes = append(obs.Routes, peer(n).Prefix)
	}
	absentFrom := func(ps []Peer) map[wgtypes.Key]time.Time {
		m := map[wgtypes.Key]time.Time{}
		for _, kp := range obs.Peers {
			if !slices.ContainsFunc(ps, func(p Peer) bool { return p.PublicKey == kp.PublicKey }) {
				m[kp.PublicKey] = past
			}
		}
		return m
	}
	keys := func(ps []Peer) []wgtypes.Key {
		var out []wgtypes.Key
		for _, p := range ps {
			out = append(out, p.PublicKey)
		}
		slices.SortFunc(out, compareKeys)
		return out
	}
	tests := []struct {
		name        string
		desired     []Peer
		released    []Peer
		wantBreaker bool
		wantRemoved []Peer
		wantHeld    int
	}{
		{"few removals go through", all[3:], nil, false, all[:3], 0},
		{"half goes through (not more than 0.5)", all[5:], nil, false, all[:5], 0},
		{"80% trips the breaker", all[8:], nil, true, nil, 8},
		{"empty catalog trips it", nil, nil, true, nil, 10},
		{"released peers go, the rest stay", all[8:], all[:4], true, all[:4], 4},
		{"all released", all[8:], all[:8], true, all[:8], 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			released := map[wgtypes.Key]bool{}
			for _, p := range tt.released {
				released[p.PublicKey] = true
			}
			plan := Diff(tt.desired, obs, Removal{
				Grace: time.Minute, AbsentSince: absentFrom(tt.desired), Now: t0,
				MaxFraction: 0.5, Floor: 3, Released: released,
			})
			if plan.Breaker != tt.wantBreaker {
				t.Errorf("Breaker = %v, want %v", plan.Breaker, tt.wantBreaker)
			}
			if diff := cmp.Diff(keys(tt.wantRemoved), plan.Remove, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("removed (-want +got):\n%s", diff)
			}
			if len(plan.Held) != tt.wantHeld {
				t.Errorf("%d held, want %d", len(plan.Held), tt.wantHeld)
			}
			for _, h := range plan.Held {
				if !h.Breaker {
					t.Errorf("held %s is past its grace but not marked as held by the breaker", h.PublicKey)
				}
			}
			if !plan.NextDeadline().IsZero() {
				t.Errorf("NextDeadline = %v with only breaker-held peers, want zero", plan.NextDeadline())
			}
			// Routes stay with held peers and go with removed ones.
			if len(plan.DelRoutes) != len(plan.Remove) {
				t.Errorf("%d routes deleted for %d peers removed", len(plan.DelRoutes), len(plan.Remove))
			}
		})
	}
	t.Run("within the grace nothing is breaker-held", func(t *testing.T) {
		absent := absentFrom(all[8:])
		for k := range absent {
			absent[k] = t0
		}
		plan := Diff(all[8:], obs, Removal{Grace: time.Minute, AbsentSince: absent, Now: t0, MaxFraction: 0.5, Floor: 3})
		if !plan.Breaker || len(plan.Held) != 8 || len(plan.Remove) != 0 {
			t.Fatalf("plan = %+v; want 8 held in their grace, breaker reported", plan)
		}
		for _, h := range plan.Held {
			if h.Breaker {
				t.Errorf("%s marked breaker-held within its grace", h.PublicKey)
			}
		}
	})
}

// TestApplied: the kernel as Applied predicts it needs nothing more, and
// holds exactly the desired peers (plus those held), with their routes.
func TestApplied(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	moved := peer(3)
	moved.Endpoint = netip.MustParseAddrPort("198.18.1.3:51820")
	rotated := peer(3)
	rotated.PublicKey = mustKey(33)
	renumbered := peer(3)
	renumbered.Prefix = netip.MustParsePrefix("fdaa:0:33::/48")
	roaming := peer(4)
	roaming.Endpoint = netip.AddrPort{}
	learnt := kernelPeer(4)
	learnt.Endpoint = netip.MustParseAddrPort("203.0.113.9:40000")
	full := Observed{Peers: []KernelPeer{kernelPeer(2), kernelPeer(3)}, Routes: []netip.Prefix{peer(2).Prefix, peer(3).Prefix}}
	tests := []struct {
		name    string
		desired []Peer
		obs     Observed
		grace   time.Duration
	}{
		{"empty kernel", []Peer{peer(2), peer(3)}, Observed{}, 0},
		{"endpoint change", []Peer{peer(2), moved}, full, 0},
		{"rotation", []Peer{peer(2), rotated}, full, 0},
		{"renumbering", []Peer{peer(2), renumbered}, full, 0},
		{"removal past grace", []Peer{peer(2)}, full, 0},
		{"removal held", []Peer{peer(2)}, full, time.Hour},
		{"roaming peer keeps its learnt endpoint", []Peer{roaming}, Observed{Peers: []KernelPeer{learnt}, Routes: []netip.Prefix{roaming.Prefix}}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rm := Removal{Grace: tt.grace, Now: t0}
			plan := Diff(tt.desired, tt.obs, rm)
			next := Applied(tt.obs, plan)
			if again := Diff(tt.desired, next, rm); !again.Empty() {
				t.Errorf("after Applied, Diff still plans %+v", again)
			}
			want := len(tt.desired) + len(plan.Held)
			if len(next.Peers) != want || len(next.Routes) != want {
				t.Errorf("Applied holds %d peers and %d routes, want %d of each: %+v", len(next.Peers), len(next.Routes), want, next)
			}
			for _, kp := range next.Peers {
				if kp.PublicKey == learnt.PublicKey && kp.Endpoint != learnt.Endpoint {
					t.Errorf("roaming peer's endpoint = %v, want the learnt %v", kp.Endpoint, learnt.Endpoint)
				}
			}
			own := Observed{Peers: slices.Clone(tt.obs.Peers), Routes: slices.Clone(tt.obs.Routes)}
			applyInPlace(&own, plan)
			if diff := cmp.Diff(next, own, netipOpts, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("applyInPlace differs from Applied (-Applied +in place):\n%s", diff)
			}
		})
	}
}

// TestApplyInPlaceMatchesApplied: random plans on random sorted kernels,
// written in place, leave what Applied returns.
func TestApplyInPlaceMatchesApplied(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	prefix := func(i int) netip.Prefix {
		return netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0xaa, 0, byte(i)}), 48)
	}
	for round := range 500 {
		var obs Observed
		for i := range 40 {
			if rng.IntN(2) == 0 {
				obs.Peers = append(obs.Peers, KernelPeer{PublicKey: mustKey(byte(i + 1)), Endpoint: netip.MustParseAddrPort("198.18.0.1:51820"), AllowedIPs: []netip.Prefix{prefix(i)}})
				obs.Routes = append(obs.Routes, prefix(i))
			}
		}
		obs.Sort()
		var plan Plan
		for range rng.IntN(8) {
			i := rng.IntN(60)
			switch rng.IntN(4) {
			case 0:
				p := Peer{Node: fmt.Sprint(i), PublicKey: mustKey(byte(i + 1)), Prefix: prefix(i), Endpoint: netip.MustParseAddrPort("198.18.0.2:51820")}
				if rng.IntN(3) == 0 {
					p.Endpoint = netip.AddrPort{} // roaming: keeps what the kernel learnt
				}
				plan.Upsert = append(plan.Upsert, p)
			case 1:
				plan.Remove = append(plan.Remove, mustKey(byte(i+1)))
			case 2:
				plan.AddRoutes = append(plan.AddRoutes, prefix(i))
			case 3:
				plan.DelRoutes = append(plan.DelRoutes, prefix(i))
			}
		}
		want := Applied(obs, plan)
		own := Observed{Peers: slices.Clone(obs.Peers), Routes: slices.Clone(obs.Routes)}
		applyInPlace(&own, plan)
		if diff := cmp.Diff(want, own, netipOpts, cmpopts.EquateEmpty()); diff != "" {
			t.Fatalf("round %d, plan %+v: applyInPlace differs from Applied (-Applied +in place):\n%s", round, plan, diff)
		}
	}
}

// TestParseEntryDeterministic: an entry with several over-long Meta values
// is always rejected for the same one (the first by key), whatever the
// map's iteration order.
func TestParseEntryDeterministic(t *testing.T) {
	e := entry(2, meta("zz", strings.Repeat("x", MaxMetaValue+1)), meta("aa", strings.Repeat("y", MaxMetaValue+2)))
	for range 50 {
		_, err := ParseEntry(e, rules)
		if err == nil || !strings.Contains(err.Error(), "meta aa is 514 characters") {
			t.Fatalf("ParseEntry: %v, want the over-long value of key aa", err)
		}
	}
}

// TestTagsBounded: an entry may carry up to MaxTags tags of up to
// MaxMetaValue characters; more is a rejection naming the tags.
func TestTagsBounded(t *testing.T) {
	ok := entry(2)
	ok.Tags = make([]string, MaxTags)
	for i := range ok.Tags {
		ok.Tags[i] = strings.Repeat("t", MaxMetaValue)
	}
	if _, err := ParseEntry(ok, rules); err != nil {
		t.Fatalf("%d tags of %d characters: %v", MaxTags, MaxMetaValue, err)
	}
	many := entry(2)
	many.Tags = append(slices.Clone(ok.Tags), "one-more")
	long := entry(2)
	long.Tags = []string{strings.Repeat("t", MaxMetaValue+1)}
	for name, e := range map[string]Entry{"65 tags": many, "a long tag": long} {
		_, err := ParseEntry(e, rules)
		var ee *EntryError
		if !errors.As(err, &ee) || ee.Field != "tags" {
			t.Errorf("%s: %v, want a tags rejection", name, err)
		}
	}
}
