package peers

import (
	"bytes"
	"maps"
	"net/netip"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// KernelPeer is a peer as the WireGuard device reports it.
type KernelPeer struct {
	PublicKey  wgtypes.Key
	Endpoint   netip.AddrPort
	AllowedIPs []netip.Prefix
	Keepalive  time.Duration
}

// Observed is what the kernel actually has: every peer on meshd's link and
// the routes on it that carry meshd's protocol tag. Foreign routes are not
// part of it, so no plan can ever touch them. Peers are sorted by key and
// routes by prefix (see Sort; Applied returns them so).
type Observed struct {
	Peers  []KernelPeer
	Routes []netip.Prefix
}

// Sort puts the peers in key order and the routes in prefix order.
func (o *Observed) Sort() {
	slices.SortFunc(o.Peers, func(a, b KernelPeer) int { return compareKeys(a.PublicKey, b.PublicKey) })
	slices.SortFunc(o.Routes, netip.Prefix.Compare)
}

// Removal is the state that decides when a peer absent from the catalog may
// leave the kernel.
type Removal struct {
	// Grace is how long a peer must have been absent before it is removed.
	Grace time.Duration
	// AbsentSince is when each kernel peer that no entry asks for was
	// first noticed so. See Track.
	AbsentSince map[wgtypes.Key]time.Time
	// Now is the time of this computation.
	Now time.Time
	// MaxFraction and Floor make the mass-removal circuit breaker: when
	// more than Floor absent peers, and more than MaxFraction of the
	// kernel's peers, are pending removal at the same time (in or past
	// their grace), none is removed until released. An empty desired set
	// with peers in the kernel always trips it. A zero MaxFraction turns the
	// breaker off.
	MaxFraction float64
	Floor       int
	// Released peers may go despite the breaker: an operator said so.
	Released map[wgtypes.Key]bool
	// Recent is how many peers were removed for their grace within the
	// last BreakerWindow, and Peak the most kernel peers seen within it
	// (the Planner keeps both): the breaker counts removals over the
	// window against the largest mesh of the window, so removing just under
	// the threshold, waiting out the grace and repeating cannot empty the
	// mesh. Zero: this plan alone counts.
	Recent, Peak int
}

// BreakerWindow is how long removals count towards the circuit breaker.
const BreakerWindow = time.Hour

// Held is a kernel peer kept although no catalog entry asks for it.
type Held struct {
	PublicKey wgtypes.Key
	// Until is when its removal grace ends.
	Until time.Time
	// Breaker is true when its grace has ended and only the circuit
	// breaker keeps it.
	Breaker bool
}

// Plan is what to write to the kernel, applied in this order: upsert peers,
// add routes, delete routes, remove peers (add before delete).
type Plan struct {
	Upsert    []Peer
	AddRoutes []netip.Prefix
	DelRoutes []netip.Prefix
	Remove    []wgtypes.Key
	// Held peers stay for now; the earliest Until is when to look again.
	Held []Held
	// Breaker says the mass-removal circuit breaker is tripped: Pending
	// removals (with the window's recent ones) are more than the rules
	// allow.
	Breaker bool
	Pending int
	// Expired counts the peers of Remove that go because their grace ended
	// (not those replaced by a new key, nor those an operator released):
	// the removals the breaker's window remembers.
	Expired int
}

// Empty reports whether the plan writes nothing.
func (p Plan) Empty() bool {
	return len(p.Upsert) == 0 && len(p.AddRoutes) == 0 && len(p.DelRoutes) == 0 && len(p.Remove) == 0
}

// NextDeadline is the earliest time a held peer's grace ends, or zero.
// Peers held by the breaker wait for a release, not for a time.
func (p Plan) NextDeadline() time.Time {
	var t time.Time
	for _, h := range p.Held {
		if h.Breaker {
			continue
		}
		if t.IsZero() || h.Until.Before(t) {
			t = h.Until
		}
	}
	return t
}

// Diff computes the plan that takes the kernel from obs to desired.
//
// A desired peer is written only when the kernel lacks it or differs in
// endpoint, allowed IPs or keepalive. A kernel peer that no entry asks for
// is removed at once when a desired peer now owns its allowed IPs (the node
// rotated its key or its prefix moved); otherwise it is held until its
// grace ends, and its routes are kept with it; past its grace it is still
// held while the circuit breaker is tripped, unless released.
func Diff(desired []Peer, obs Observed, rm Removal) Plan {
	var plan Plan
	kernel := make(map[wgtypes.Key]KernelPeer, len(obs.Peers))
	for _, kp := range obs.Peers {
		kernel[kp.PublicKey] = kp
	}
	want := make(map[wgtypes.Key]bool, len(desired))
	routes := make(map[netip.Prefix]bool, len(desired))
	for _, p := range desired {
		want[p.PublicKey] = true
		routes[p.Prefix] = true
		kp, ok := kernel[p.PublicKey]
		if !ok || !sameConfig(p, kp) {
			plan.Upsert = append(plan.Upsert, p)
		}
	}
	owned := maps.Clone(routes)
	var absent []KernelPeer
	for _, kp := range obs.Peers {
		if want[kp.PublicKey] {
			continue
		}
		if replaced(kp, owned) {
			plan.Remove = append(plan.Remove, kp.PublicKey)
			continue
		}
		absent = append(absent, kp)
	}
	for r := range decideAbsent(&plan, absent, len(desired), len(obs.Peers), rm) {
		routes[r] = true
	}
	have := make(map[netip.Prefix]bool, len(obs.Routes))
	for _, r := range obs.Routes {
		have[r] = true
		if !routes[r] {
			plan.DelRoutes = append(plan.DelRoutes, r)
		}
	}
	for _, p := range desired {
		if !have[p.Prefix] {
			plan.AddRoutes = append(plan.AddRoutes, p.Prefix)
		}
	}
	slices.SortFunc(plan.Remove, compareKeys)
	slices.SortFunc(plan.Held, func(a, b Held) int { return compareKeys(a.PublicKey, b.PublicKey) })
	slices.SortFunc(plan.DelRoutes, netip.Prefix.Compare)
	slices.SortFunc(plan.AddRoutes, netip.Prefix.Compare)
	return plan
}

func compareKeys(a, b wgtypes.Key) int { return bytes.Compare(a[:], b[:]) }

// sameConfig reports whether the kernel peer is configured as p asks. A
// peer without an endpoint (a roaming user) leaves the endpoint to
// WireGuard, which learns it from the peer's packets.
func sameConfig(p Peer, kp KernelPeer) bool {
	if p.Endpoint.IsValid() && kp.Endpoint != p.Endpoint || kp.Keepalive != p.Keepalive || len(kp.AllowedIPs) != 1 {
		return false
	}
	return kp.AllowedIPs[0].Masked() == p.Prefix
}

// Track returns the AbsentSince map for the next Diff: a kernel peer that
// no entry asks for keeps the time it was first noticed absent, or starts
// its grace now (after a restart, a peer the new catalog lacks gets the
// full grace, not none); every other key is forgotten, so a node that comes
// back and leaves again gets a fresh grace.
func Track(absentSince map[wgtypes.Key]time.Time, desired []Peer, obs Observed, now time.Time) map[wgtypes.Key]time.Time {
	want := make(map[wgtypes.Key]bool, len(desired))
	for _, p := range desired {
		want[p.PublicKey] = true
	}
	var absent []KernelPeer
	for _, kp := range obs.Peers {
		if !want[kp.PublicKey] {
			absent = append(absent, kp)
		}
	}
	return absentTimes(absentSince, absent, now)
}

// absentTimes is Track's map for the kernel peers no desired peer asks
// for: the time each was first noticed so, or now.
func absentTimes(absentSince map[wgtypes.Key]time.Time, absent []KernelPeer, now time.Time) map[wgtypes.Key]time.Time {
	next := make(map[wgtypes.Key]time.Time, len(absent))
	for _, kp := range absent {
		if t, ok := absentSince[kp.PublicKey]; ok {
			next[kp.PublicKey] = t
		} else {
			next[kp.PublicKey] = now
		}
	}
	return next
}

// Applied is what the kernel holds once plan, computed against obs, is
// written: obs with the plan's peers upserted and removed and its routes
// added and deleted, sorted by key and by prefix. An agent that trusts it
// may diff the next change against it without reading a device of
// thousands of peers; it must still read the kernel from time to time, as
// nothing else changes it back. It merges sorted lists, so that a plan of
// one peer on a kernel of thousands costs a copy, not a rebuild.
func Applied(obs Observed, plan Plan) Observed {
	byKey := func(a, b KernelPeer) int { return compareKeys(a.PublicKey, b.PublicKey) }
	have := sortedUnique(obs.Peers, byKey)
	up := make([]KernelPeer, 0, len(plan.Upsert))
	for _, p := range plan.Upsert {
		up = append(up, KernelPeer{PublicKey: p.PublicKey, Endpoint: p.Endpoint, AllowedIPs: []netip.Prefix{p.Prefix}, Keepalive: p.Keepalive})
	}
	up = sortedUnique(up, byKey)
	remove := sortedUnique(plan.Remove, compareKeys)
	del := sortedUnique(plan.DelRoutes, netip.Prefix.Compare)
	out := Observed{
		Peers: merge(have, up, byKey, func(old, kp KernelPeer) KernelPeer {
			if !kp.Endpoint.IsValid() {
				kp.Endpoint = old.Endpoint // WireGuard keeps what it learnt
			}
			return kp
		}),
		Routes: merge(sortedUnique(obs.Routes, netip.Prefix.Compare), sortedUnique(plan.AddRoutes, netip.Prefix.Compare),
			netip.Prefix.Compare, func(_, r netip.Prefix) netip.Prefix { return r }),
	}
	out.Peers = slices.DeleteFunc(out.Peers, func(kp KernelPeer) bool {
		_, ok := slices.BinarySearchFunc(remove, kp.PublicKey, compareKeys)
		return ok
	})
	out.Routes = slices.DeleteFunc(out.Routes, func(r netip.Prefix) bool {
		_, ok := slices.BinarySearchFunc(del, r, netip.Prefix.Compare)
		return ok
	})
	return out
}

// merge merges two strictly sorted lists into a new one; where both hold an
// element, it is pick(a's, b's).
func merge[T any](a, b []T, cmp func(x, y T) int, pick func(x, y T) T) []T {
	out := make([]T, 0, len(a)+len(b))
	for len(a) > 0 && len(b) > 0 {
		switch c := cmp(a[0], b[0]); {
		case c < 0:
			out, a = append(out, a[0]), a[1:]
		case c > 0:
			out, b = append(out, b[0]), b[1:]
		default:
			out, a, b = append(out, pick(a[0], b[0])), a[1:], b[1:]
		}
	}
	return append(append(out, a...), b...)
}

// sortedUnique returns s sorted, keeping the last of equal elements; s
// itself when it already is strictly sorted.
func sortedUnique[T any](s []T, cmp func(a, b T) int) []T {
	if slices.IsSortedFunc(s, func(a, b T) int {
		if c := cmp(a, b); c != 0 {
			return c
		}
		return -1 // equal neighbours: not strictly sorted
	}) {
		return s
	}
	s = slices.Clone(s)
	slices.SortStableFunc(s, cmp)
	out := s[:0]
	for i := range s {
		if i+1 < len(s) && cmp(s[i], s[i+1]) == 0 {
			continue
		}
		out = append(out, s[i])
	}
	return out
}

// applyInPlace is Applied for an obs whose peers and routes are strictly
// sorted and owned by the caller: each write of plan is a binary search
// and an insert, replace or delete in obs's own slices, with no copy of
// the rest.
func applyInPlace(obs *Observed, plan Plan) {
	byKey := func(kp KernelPeer, k wgtypes.Key) int { return compareKeys(kp.PublicKey, k) }
	for _, p := range plan.Upsert {
		kp := KernelPeer{PublicKey: p.PublicKey, Endpoint: p.Endpoint, AllowedIPs: []netip.Prefix{p.Prefix}, Keepalive: p.Keepalive}
		i, found := slices.BinarySearchFunc(obs.Peers, p.PublicKey, byKey)
		if !found {
			obs.Peers = slices.Insert(obs.Peers, i, kp)
			continue
		}
		if !kp.Endpoint.IsValid() {
			kp.Endpoint = obs.Peers[i].Endpoint // WireGuard keeps what it learnt
		}
		obs.Peers[i] = kp
	}
	for _, k := range plan.Remove {
		if i, found := slices.BinarySearchFunc(obs.Peers, k, byKey); found {
			obs.Peers = slices.Delete(obs.Peers, i, i+1)
		}
	}
	for _, r := range plan.AddRoutes {
		if i, found := slices.BinarySearchFunc(obs.Routes, r, netip.Prefix.Compare); !found {
			obs.Routes = slices.Insert(obs.Routes, i, r)
		}
	}
	for _, r := range plan.DelRoutes {
		if i, found := slices.BinarySearchFunc(obs.Routes, r, netip.Prefix.Compare); found {
			obs.Routes = slices.Delete(obs.Routes, i, i+1)
		}
	}
}
