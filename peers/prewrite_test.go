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

// conflictedFleet is n signed entries registered in a shuffled order, with
// entries that collide with an earlier one (a second service ID for the
// same node and prefix, signed by that node) and entries whose signature
// was tampered with: a first read's verdicts depend on the order entries
// are judged in, and on each verification.
func conflictedFleet(t *testing.T, n int) ([]Entry, Rules) {
	f := newFleet(t, "prewrite")
	entries := benchFleet(t, f, n)
	rng := rand.New(rand.NewPCG(3, 5))
	for i, c := range rng.Perm(n) {
		entries[i].CreateIndex = uint64(10 + c)
	}
	for i := 1; i < n; i++ {
		switch {
		case i%97 == 0:
			prev := entries[i-1]
			p, err := ParseEntry(prev, Rules{Supernet: rules.Supernet})
			if err != nil {
				t.Fatal(err)
			}
			k := p.PublicKey
			k[31] ^= 0xff
			p.PublicKey = k
			meta := map[string]string{MetaVersion: "1", MetaNode: p.Node, MetaPublicKey: k.String(),
				MetaEndpoint: prev.Meta[MetaEndpoint], MetaPrefix: prev.Meta[MetaPrefix]}
			if entries[i].Meta, err = Sign(meta, p, f.signers[p.Node], 2); err != nil {
				t.Fatal(err)
			}
		case i%89 == 0:
			sig := []byte(entries[i].Meta[MetaSignature])
			sig[3] ^= 1
			entries[i].Meta[MetaSignature] = string(sig)
		}
	}
	slices.SortFunc(entries, func(a, b Entry) int { return strings.Compare(a.ServiceID, b.ServiceID) })
	return entries, f.rules()
}

// TestDesireChunksMatchSerial: the cache's full pass, which verifies
// entries on every CPU chunk by chunk (each chunk's signatures in one
// batch, again one by one when the batch fails) while it judges the chunks
// before, comes to the verdicts of a pass without a cache, which parses
// and verifies each entry alone as it judges it; the peers it hands out
// as it goes are exactly the peers it returns. Once with valid entries
// only (every batch verifies), once with conflicts and bad signatures in
// every chunk.
func TestDesireChunksMatchSerial(t *testing.T) {
	n := 3*parallelParse + 40
	conflicted, r := conflictedFleet(t, n)
	f := newFleet(t, "clean")
	for _, tc := range []struct {
		name    string
		entries []Entry
		rules   Rules
		minRej  int
	}{
		{"valid", benchFleet(t, f, n), f.rules(), 0},
		{"conflicts and bad signatures", conflicted, r, 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want, wantRej := Desire(tc.entries, Self{Node: "self"}, tc.rules)
			var c ParseCache
			var emitted []Peer
			calls := 0
			got, gotRej := c.desireEmit(tc.entries, Self{Node: "self"}, tc.rules, func(ps []Peer) {
				calls++
				emitted = append(emitted, ps...)
			})
			opts := []cmp.Option{netipOpts, cmpopts.EquateEmpty()}
			if diff := cmp.Diff(want, got, opts...); diff != "" {
				t.Fatalf("peers (-serial +chunked):\n%s", diff)
			}
			if diff := cmp.Diff(wantRej, gotRej, opts...); diff != "" {
				t.Fatalf("rejections (-serial +chunked):\n%s", diff)
			}
			if len(gotRej) < tc.minRej || len(got) < n/2 {
				t.Fatalf("%d peers and %d rejections: the fleet no longer has what the case is about", len(got), len(gotRej))
			}
			if c.parses != uint64(len(tc.entries)) {
				t.Errorf("parsed %d entries, want each of the %d once", c.parses, len(tc.entries))
			}
			byNode := func(a, b Peer) int { return strings.Compare(a.Node, b.Node) }
			slices.SortFunc(emitted, byNode)
			if diff := cmp.Diff(got, emitted, opts...); diff != "" {
				t.Fatalf("peers handed out (-returned +emitted):\n%s", diff)
			}
			if calls < 4 {
				t.Errorf("peers handed out in %d calls, want one per chunk of %d (4)", calls, parallelParse)
			}
		})
	}
}

// kernelOf is a kernel for a Planner test: what observe reads, and what
// Prewrite writes to.
type kernelOf struct {
	obs     Observed
	reads   int
	writes  int
	failAt  int // the write that fails (1: the first); 0: none
	landed  int // of the failing write, the peers that land anyway
	written []Peer
}

func (k *kernelOf) observe() (Observed, error) { k.reads++; return k.obs, nil }

func (k *kernelOf) prewrite(p Plan) error {
	k.writes++
	if len(p.Remove)+len(p.DelRoutes) > 0 {
		return errors.New("a write ahead of the plan removes")
	}
	for _, r := range p.AddRoutes {
		if slices.Contains(k.obs.Routes, r) {
			return fmt.Errorf("add route %s: file exists", r)
		}
	}
	if k.writes == k.failAt {
		k.obs = Applied(k.obs, Plan{Upsert: p.Upsert[:k.landed]})
		return errors.New("device busy")
	}
	k.obs = Applied(k.obs, p)
	k.written = append(k.written, p.Upsert...)
	return nil
}

func keySet(ps []Peer) []wgtypes.Key {
	var ks []wgtypes.Key
	for _, p := range ps {
		ks = append(ks, p.PublicKey)
	}
	slices.SortFunc(ks, compareKeys)
	return ks
}

// TestFirstPlanPrewrite: a first plan against an empty kernel writes the
// peers as they are accepted, and the plan holds the rest: what was
// written and what the plan writes are together what a planner without
// Prewrite plans, and the verdicts are the same. A write that fails makes
// the planner read the kernel again; a kernel that holds peers, or a cap
// the fleet is over, writes nothing ahead.
func TestFirstPlanPrewrite(t *testing.T) {
	entries, r := conflictedFleet(t, 4*parallelParse)
	now := time.Unix(1_700_000_000, 0)
	self := Self{Node: "self"}
	ref := Planner{Rules: r}
	want, err := ref.Plan(entries, self, func() (Observed, error) { return Observed{}, nil }, now)
	if err != nil {
		t.Fatal(err)
	}
	opts := []cmp.Option{netipOpts, cmpopts.EquateEmpty()}
	for _, tc := range []struct {
		name           string
		kernel         kernelOf
		maxPeers       int
		wantReads      int
		wantPrewritten bool
	}{
		{name: "empty kernel", wantReads: 1, wantPrewritten: true},
		{name: "first write fails, half of it landed", kernel: kernelOf{failAt: 1, landed: 7}, wantReads: 2, wantPrewritten: true},
		{name: "kernel holds a route of a desired peer", kernel: kernelOf{obs: Observed{Routes: []netip.Prefix{want.Desired[3].Prefix}}}, wantReads: 1, wantPrewritten: true},
		{name: "kernel holds a peer", kernel: kernelOf{obs: Observed{Peers: []KernelPeer{kernelPeer(250)}}}, wantReads: 1},
		{name: "over the peer cap", maxPeers: 100, wantReads: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := tc.kernel
			pl := Planner{Rules: r, Grace: time.Hour, MaxPeers: tc.maxPeers, Prewrite: k.prewrite}
			got, err := pl.Plan(entries, self, k.observe, now)
			if err != nil {
				t.Fatal(err)
			}
			if k.reads != tc.wantReads {
				t.Errorf("kernel read %d times, want %d", k.reads, tc.wantReads)
			}
			if tc.wantPrewritten != (k.writes > 0) {
				t.Fatalf("%d writes ahead of the plan; want some: %t", k.writes, tc.wantPrewritten)
			}
			if tc.maxPeers > 0 {
				return // capped: another plan than ref's
			}
			if diff := cmp.Diff(want.Desired, got.Desired, opts...); diff != "" {
				t.Fatalf("desired (-without Prewrite +with):\n%s", diff)
			}
			if diff := cmp.Diff(want.Rejected, got.Rejected, opts...); diff != "" {
				t.Fatalf("rejected (-without Prewrite +with):\n%s", diff)
			}
			// Everything the plan without Prewrite upserts is in the kernel
			// or in this plan, and nothing twice.
			upserted := keySet(want.Plan.Upsert)
			inKernel := []wgtypes.Key{}
			for _, kp := range k.obs.Peers {
				inKernel = append(inKernel, kp.PublicKey)
			}
			planned := keySet(got.Plan.Upsert)
			both := slices.Concat(planned, inKernel)
			slices.SortFunc(both, compareKeys)
			if tc.kernel.obs.Peers != nil {
				both = slices.DeleteFunc(both, func(x wgtypes.Key) bool { return x == kernelPeer(250).PublicKey })
				if len(got.Plan.Remove) != 0 || len(got.Plan.Held) != 1 {
					t.Errorf("the foreign-to-the-catalog kernel peer: removed %d, held %d; want held through its grace", len(got.Plan.Remove), len(got.Plan.Held))
				}
			}
			if diff := cmp.Diff(upserted, both); diff != "" {
				t.Fatalf("peers (-upserted without Prewrite +written ahead or planned):\n%s", diff)
			}
			if tc.wantPrewritten && len(planned) >= len(upserted) {
				t.Errorf("the plan still upserts %d of %d peers after writing ahead", len(planned), len(upserted))
			}
			// The same for routes.
			routes := slices.Concat(got.Plan.AddRoutes, k.obs.Routes)
			slices.SortFunc(routes, netip.Prefix.Compare)
			if diff := cmp.Diff(want.Plan.AddRoutes, routes, opts...); diff != "" {
				t.Fatalf("routes (-added without Prewrite +in the kernel or planned):\n%s", diff)
			}
			if len(got.Plan.Remove) != 0 {
				t.Errorf("a first plan removes %d peers", len(got.Plan.Remove))
			}
			// Committed, the next plan of the same entries has nothing to do.
			pl.Commit(got)
			again, err := pl.Plan(entries, self, k.observe, now)
			if err != nil {
				t.Fatal(err)
			}
			if n := len(again.Plan.Upsert) + len(again.Plan.AddRoutes) + len(again.Plan.Remove); n != 0 {
				t.Errorf("the plan after it still writes %d things", n)
			}
		})
	}
}
