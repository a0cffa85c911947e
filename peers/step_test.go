package peers

import (
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

// appliedByMaps is Applied as a rebuild through maps: the plain statement
// of what Applied must return.
func appliedByMaps(obs Observed, plan Plan) Observed {
	kernel := map[wgtypes.Key]KernelPeer{}
	for _, kp := range obs.Peers {
		kernel[kp.PublicKey] = kp
	}
	for _, p := range plan.Upsert {
		kp := KernelPeer{PublicKey: p.PublicKey, Endpoint: p.Endpoint, AllowedIPs: []netip.Prefix{p.Prefix}, Keepalive: p.Keepalive}
		if !p.Endpoint.IsValid() {
			kp.Endpoint = kernel[p.PublicKey].Endpoint
		}
		kernel[p.PublicKey] = kp
	}
	for _, k := range plan.Remove {
		delete(kernel, k)
	}
	routes := map[netip.Prefix]bool{}
	for _, r := range obs.Routes {
		routes[r] = true
	}
	for _, r := range plan.AddRoutes {
		routes[r] = true
	}
	for _, r := range plan.DelRoutes {
		delete(routes, r)
	}
	var out Observed
	for _, kp := range kernel {
		out.Peers = append(out.Peers, kp)
	}
	for r := range routes {
		out.Routes = append(out.Routes, r)
	}
	slices.SortFunc(out.Peers, func(a, b KernelPeer) int { return compareKeys(a.PublicKey, b.PublicKey) })
	slices.SortFunc(out.Routes, netip.Prefix.Compare)
	return out
}

// world is a fleet whose nodes join, leave, rotate keys, move endpoints
// and prefixes, at random: a desired set as Desire would return it.
type world struct {
	rng   *rand.Rand
	nodes map[string]Peer
	left  map[string]Peer // nodes that left, as they were
	keys  byte            // the next fresh key
}

func (w *world) freshKey() wgtypes.Key {
	w.keys++
	var k wgtypes.Key
	k[0], k[1] = w.keys, 0xee
	return k
}

// freePrefix is a /64 no node holds.
func (w *world) freePrefix() netip.Prefix {
	for {
		p := netip.MustParsePrefix(fmt.Sprintf("fdaa:0:%x::/64", w.rng.IntN(64)))
		free := true
		for _, n := range w.nodes {
			free = free && n.Prefix != p
		}
		if free {
			return p
		}
	}
}

func (w *world) change() {
	name := fmt.Sprintf("n%02d", w.rng.IntN(24))
	p, ok := w.nodes[name]
	switch op := w.rng.IntN(7); {
	case !ok && op < 3 && w.left[name].Node != "":
		// Back with its old key, on its old prefix or a new one.
		p = w.left[name]
		if op == 0 || slices.ContainsFunc(w.desired(), func(q Peer) bool { return q.Prefix == p.Prefix }) {
			p.Prefix = w.freePrefix()
		}
		w.nodes[name] = p
	case !ok:
		w.nodes[name] = Peer{Node: name, PublicKey: w.freshKey(), Prefix: w.freePrefix(),
			Endpoint: netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), uint16(1000+w.rng.IntN(9)))}
	case op == 0:
		w.left[name] = p
		delete(w.nodes, name)
	case op == 1:
		p.PublicKey = w.freshKey()
	case op == 2:
		p.Endpoint = netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), uint16(1000+w.rng.IntN(9)))
	case op == 3:
		p.Endpoint = netip.AddrPort{} // a roaming peer
	case op == 4:
		p.Prefix = w.freePrefix()
	case op == 5:
		p.Keepalive = time.Duration(w.rng.IntN(2)) * 25 * time.Second
	default:
		p.PublicKey, p.Prefix = w.freshKey(), w.freePrefix()
	}
	if ok && w.nodes[name].Node != "" {
		w.nodes[name] = p
	}
}

func (w *world) desired() []Peer {
	var out []Peer
	for _, p := range w.nodes {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b Peer) int { return strings.Compare(a.Node, b.Node) })
	return out
}

// TestStepMatchesTrackAndDiff runs fleets through thousands of changes,
// the kernel following every plan, with a removal grace, the breaker and
// releases: at every step Step returns exactly what Track and Diff return,
// and Applied what a rebuild through maps does.
func TestStepMatchesTrackAndDiff(t *testing.T) {
	opts := []cmp.Option{netipOpts, cmpopts.EquateEmpty()}
	for seed := range uint64(25) {
		rng := rand.New(rand.NewPCG(seed, 7))
		w := &world{rng: rng, nodes: map[string]Peer{}, left: map[string]Peer{}}
		for range 12 {
			w.change()
		}
		// A kernel with a foreign-looking past: some peers the fleet no
		// longer has, one without allowed IPs, a stale route.
		kernel := Observed{
			Peers: []KernelPeer{
				{PublicKey: mustKey(200), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("fdaa:0:ff::/64")}},
				{PublicKey: mustKey(201)},
			},
			Routes: []netip.Prefix{netip.MustParsePrefix("fdaa:0:ff::/64"), netip.MustParsePrefix("fdaa:0:fe::/64")},
		}
		kernel = Applied(kernel, Plan{})
		rm := Removal{Grace: time.Duration(rng.IntN(3)) * time.Second, Now: time.Unix(1000, 0), Released: map[wgtypes.Key]bool{}}
		if seed%2 == 0 {
			rm.MaxFraction, rm.Floor = 0.3, 1
		}
		desired := w.desired()
		absent := Track(nil, desired, kernel, rm.Now)
		rm.AbsentSince = absent
		plan := Diff(desired, kernel, rm)
		kernel = Applied(kernel, plan)
		for step := range 60 {
			for range 1 + rng.IntN(3) {
				w.change()
			}
			rm.Now = rm.Now.Add(time.Duration(rng.IntN(1500)) * time.Millisecond)
			if rng.IntN(10) == 0 && len(absent) > 0 {
				for k := range absent {
					rm.Released[k] = true
					break
				}
			}
			next := w.desired()
			gone, came, ok := Changed(desired, next)
			if !ok {
				t.Fatalf("seed %d step %d: Changed refused sorted sets", seed, step)
			}
			wantAbsent := Track(absent, next, kernel, rm.Now)
			full := rm
			full.AbsentSince = wantAbsent
			wantPlan := Diff(next, kernel, full)
			gotAbsent, gotPlan := Step(absent, next, gone, came, kernel, rm)
			if diff := cmp.Diff(wantAbsent, gotAbsent, opts...); diff != "" {
				t.Fatalf("seed %d step %d: Step's absentSince differs from Track's (-want +got):\n%s", seed, step, diff)
			}
			if diff := cmp.Diff(wantPlan, gotPlan, opts...); diff != "" {
				t.Fatalf("seed %d step %d: Step's plan differs from Diff's (-want +got):\n%s", seed, step, diff)
			}
			if diff := cmp.Diff(appliedByMaps(kernel, wantPlan), Applied(kernel, wantPlan), opts...); diff != "" {
				t.Fatalf("seed %d step %d: Applied (-rebuild +merge):\n%s", seed, step, diff)
			}
			kernel = Applied(kernel, wantPlan)
			desired, absent = next, wantAbsent
		}
	}
}

func TestChanged(t *testing.T) {
	a, b, c := peer(1), peer(2), peer(3)
	b2 := b
	b2.Endpoint = netip.MustParseAddrPort("192.0.2.9:1")
	c2 := c
	c2.Health = "critical" // not something the kernel holds
	gone, came, ok := Changed([]Peer{a, b, c}, []Peer{b2, c2, peer(4)})
	if !ok {
		t.Fatal("Changed refused sorted sets")
	}
	if diff := cmp.Diff([]Peer{a, b}, gone, netipOpts); diff != "" {
		t.Errorf("gone (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]Peer{b2, peer(4)}, came, netipOpts); diff != "" {
		t.Errorf("came (-want +got):\n%s", diff)
	}
	if _, _, ok := Changed([]Peer{b, a}, nil); ok {
		t.Error("Changed accepted an unsorted set")
	}
}

// TestDesirePatchMatchesFullPass changes random catalogs a few entries at a
// time (nodes, keys and prefixes drawn from small pools, so that duplicate
// nodes, keys, overlapping prefixes of several lengths, this host's own
// entry, key and prefix, and invalid entries all come up): a ParseCache,
// which patches its last result where it can, returns at every step what
// Desire's full pass returns.
func TestDesirePatchMatchesFullPass(t *testing.T) {
	prefixes := []string{"fdaa:0:2::/48", "fdaa:0:3::/48", "fdaa:0:3:1::/64", "fdaa:0:4::/56", "fdaa:0:5::/48",
		"fdaa:0:6::/48", "fdaa:0:7::/48", "fdaa:0:8::/48", "fdaa:0:1:2::/64", "fdab::/48", "fdaa:0:9::/48"}
	opts := []cmp.Option{netipOpts, cmpopts.EquateEmpty()}
	patched := 0
	for seed := range uint64(30) {
		rng := rand.New(rand.NewPCG(seed, 11))
		var modify, create uint64
		catalog := map[string]Entry{}
		set := func(idx int) {
			id := fmt.Sprintf("meshd-e%02d", idx)
			modify++
			e, ok := catalog[id]
			if !ok || rng.IntN(8) == 0 {
				create++
				e.CreateIndex = create
			}
			n := 2 + idx
			if rng.IntN(15) == 0 {
				n = 1 + rng.IntN(20) // a colliding or own node name now and then
			}
			e.ServiceID, e.ModifyIndex, e.Health = id, modify, HealthPassing
			e.Meta = entry(n).Meta
			if rng.IntN(15) == 0 {
				e.Meta[MetaPublicKey] = mustKey(byte(1 + rng.IntN(14))).String()
			}
			if rng.IntN(10) == 0 {
				e.Meta[MetaPrefix] = prefixes[rng.IntN(len(prefixes))]
			}
			if rng.IntN(12) == 0 {
				e.Meta[MetaEndpoint] = "nowhere"
			}
			catalog[id] = e
		}
		for i := range 10 {
			set(i)
		}
		// full makes a full pass every time, with the same history (the
		// peers it keeps for rejected entries).
		var cache, full ParseCache
		for step := range 80 {
			for range 1 + rng.IntN(2) {
				idx := rng.IntN(16)
				id := fmt.Sprintf("meshd-e%02d", idx)
				switch op := rng.IntN(6); {
				case op == 0:
					delete(catalog, id)
				case op == 1:
					if e, ok := catalog[id]; ok {
						e.Health = []string{HealthPassing, HealthCritical}[rng.IntN(2)]
						catalog[id] = e
					}
				default:
					set(idx)
				}
			}
			var entries []Entry
			for _, e := range catalog {
				entries = append(entries, e)
			}
			slices.SortFunc(entries, func(a, b Entry) int { return strings.Compare(a.ServiceID, b.ServiceID) })
			wasPatchable := cache.patchable
			got, gotRej := cache.Desire(entries, self, rules)
			full.patchable = false
			want, wantRej := full.Desire(entries, self, rules)
			if diff := cmp.Diff(want, got, opts...); diff != "" {
				t.Fatalf("seed %d step %d: peers (-full +cached):\n%s", seed, step, diff)
			}
			if diff := cmp.Diff(wantRej, gotRej, opts...); diff != "" {
				t.Fatalf("seed %d step %d: rejections (-full +cached):\n%s", seed, step, diff)
			}
			if wasPatchable {
				patched++
			}
			if cache.patchable {
				// The indexes a patch works from hold exactly the peers.
				under := 0
				for _, p := range got {
					if cache.byNode[p.Node] == "" || cache.byKey[p.PublicKey] != p.Node || cache.claims.exact[p.Prefix].Node != p.Node {
						t.Fatalf("seed %d step %d: peer %s missing from the indexes", seed, step, p.Node)
					}
					cache.claims.eachUnder(p.Prefix, func(netip.Prefix) { under++ })
				}
				n := 0
				for _, u := range cache.claims.under {
					n += u.n
				}
				if len(cache.byNode) != len(got) || len(cache.byKey) != len(got) || len(cache.claims.exact) != len(got) || n != under {
					t.Fatalf("seed %d step %d: indexes hold %d nodes, %d keys, %d prefixes, %d claims under; want %d, %d under",
						seed, step, len(cache.byNode), len(cache.byKey), len(cache.claims.exact), n, len(got), under)
				}
			}
		}
	}
	if patched < 500 {
		t.Errorf("only %d of 2400 steps could be patched; the test no longer exercises patch", patched)
	}
	t.Logf("%d of 2400 steps started from a patchable result", patched)
}

// TestPlannerIncrementalMatchesFull drives two Planners through the same
// random fleet, as catalog entries: one commits every plan and so plans
// incrementally (Changed, Step) against its model of the kernel; the other
// forgets its model before every plan and so reads the kernel and plans in
// full (Track, Diff). Their plans are the same at every step, through
// grace, breaker and releases.
func TestPlannerIncrementalMatchesFull(t *testing.T) {
	opts := []cmp.Option{netipOpts, cmpopts.EquateEmpty()}
	rules := Rules{Supernet: netip.MustParsePrefix("fdaa::/16")}
	self := Self{Node: "self", PublicKey: mustKey(250), Prefix: netip.MustParsePrefix("fdaa:1:1::/64")}
	for seed := range uint64(25) {
		rng := rand.New(rand.NewPCG(seed, 9))
		w := &world{rng: rng, nodes: map[string]Peer{}, left: map[string]Peer{}}
		var index uint64
		created, modified, metas := map[string]uint64{}, map[string]uint64{}, map[string]string{}
		entries := func() []Entry {
			var es []Entry
			for _, p := range w.desired() {
				id := "meshd-" + p.Node
				m := EncodeMeta(p, nil)
				if key := fmt.Sprint(m); metas[id] != key {
					index++
					metas[id], modified[id] = key, index
					if created[id] == 0 {
						created[id] = index
					}
				}
				es = append(es, Entry{ServiceID: id, Meta: m, CreateIndex: created[id], ModifyIndex: modified[id], Health: HealthPassing})
			}
			for id := range created {
				if !slices.ContainsFunc(es, func(e Entry) bool { return e.ServiceID == id }) {
					delete(created, id) // a node that comes back is a new instance
					delete(metas, id)
				}
			}
			return es
		}
		incr, full := &Planner{Rules: rules, Grace: time.Second}, &Planner{Rules: rules, Grace: time.Second}
		// delta plans from the changed IDs alone (PlanChanged), as the
		// agent does with the catalog's deltas.
		delta := &Planner{Rules: rules, Grace: time.Second}
		if seed%2 == 0 {
			incr.MaxFraction, incr.Floor = 0.3, 1
			full.MaxFraction, full.Floor = 0.3, 1
			delta.MaxFraction, delta.Floor = 0.3, 1
		}
		var last, own []Entry
		replan := rand.New(rand.NewPCG(seed, 77))
		kernel := Observed{}
		observe := func() (Observed, error) { return kernel, nil }
		now := time.Unix(1000, 0)
		incremental := 0
		for step := range 60 {
			for range 1 + rng.IntN(3) {
				w.change()
			}
			now = now.Add(time.Duration(rng.IntN(1500)) * time.Millisecond)
			if rng.IntN(10) == 0 {
				if a, b, c := incr.Release(), full.Release(), delta.Release(); a != b || b != c {
					t.Fatalf("seed %d step %d: released %d, %d and %d", seed, step, a, b, c)
				}
			}
			es := entries()
			if incr.Trusts() {
				incremental++
			}
			full.Forget()
			got, err := incr.Plan(es, self, func() (Observed, error) {
				if step > 0 {
					t.Fatalf("seed %d step %d: a committed planner read the kernel", seed, step)
				}
				return kernel, nil
			}, now)
			if err != nil {
				t.Fatal(err)
			}
			want, err := full.Plan(es, self, observe, now)
			if err != nil {
				t.Fatal(err)
			}
			var changed []string
			if step > 0 {
				changed = changedIDs(last, es)
			}
			last = es
			// As the agent does: one list, changed in place.
			own = replaceIDs(own, changed, es)
			if step == 0 {
				own = slices.Clone(es)
			}
			deltaObserve := func() (Observed, error) {
				if step > 0 {
					t.Fatalf("seed %d step %d: a committed delta planner read the kernel", seed, step)
				}
				return kernel, nil
			}
			var dres Result
			if replan.IntN(8) == 0 {
				// A whole plan of the list changed in place (the agent's
				// after a failed reconcile, or a list read): nothing may
				// be taken from a comparison with the list it was last
				// given.
				dres, err = delta.PlanChanged(own, nil, self, deltaObserve, now)
			} else {
				dres, err = delta.PlanChanged(own, changed, self, deltaObserve, now)
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want.Plan, dres.Plan, opts...); diff != "" {
				t.Fatalf("seed %d step %d: delta plan differs from the full one (-full +delta):\n%s", seed, step, diff)
			}
			if diff := cmp.Diff(want.Desired, dres.Desired, opts...); diff != "" {
				t.Fatalf("seed %d step %d: delta desired set differs (-full +delta):\n%s", seed, step, diff)
			}
			if diff := cmp.Diff(want.Rejected, dres.Rejected, opts...); diff != "" {
				t.Fatalf("seed %d step %d: delta rejections differ (-full +delta):\n%s", seed, step, diff)
			}
			delta.Commit(dres)
			if diff := cmp.Diff(want.Plan, got.Plan, opts...); diff != "" {
				t.Fatalf("seed %d step %d: incremental plan differs from the full one (-full +incremental):\n%s", seed, step, diff)
			}
			if diff := cmp.Diff(want.Desired, got.Desired, opts...); diff != "" {
				t.Fatalf("seed %d step %d: desired sets differ:\n%s", seed, step, diff)
			}
			incr.Commit(got)
			full.Commit(want) // its model is forgotten before each plan, its removals counted
			kernel = Applied(kernel, want.Plan)
		}
		if incremental < 59 {
			t.Errorf("seed %d: %d of 60 plans were incremental", seed, incremental)
		}
		t.Logf("seed %d: %d of 60 delta plans in place", seed, delta.inPlace)
		if delta.inPlace < 15 {
			t.Errorf("seed %d: %d of 60 delta plans took the change alone (the rest met conflicts between entries)", seed, delta.inPlace)
		}
	}
}

// replaceIDs changes own (sorted by service ID) in place so that the
// entries of the IDs in ids are those of next.
func replaceIDs(own []Entry, ids []string, next []Entry) []Entry {
	byID := func(e Entry, id string) int { return strings.Compare(e.ServiceID, id) }
	for _, id := range ids {
		i, found := slices.BinarySearchFunc(own, id, byID)
		j := i
		if found {
			j++
		}
		var repl []Entry
		if k, ok := slices.BinarySearchFunc(next, id, byID); ok {
			repl = next[k : k+1]
		}
		own = slices.Replace(own, i, j, repl...)
	}
	return own
}

// changedIDs are the service IDs added, removed or changed (ModifyIndex,
// CreateIndex, health) from last to next, both sorted by service ID: what
// the catalog's deltas name.
func changedIDs(last, next []Entry) []string {
	ids := []string{}
	byID := map[string]Entry{}
	for _, e := range last {
		byID[e.ServiceID] = e
	}
	for _, e := range next {
		o, ok := byID[e.ServiceID]
		if !ok || o.ModifyIndex != e.ModifyIndex || o.CreateIndex != e.CreateIndex || o.Health != e.Health {
			ids = append(ids, e.ServiceID)
		}
		delete(byID, e.ServiceID)
	}
	for id := range byID {
		ids = append(ids, id)
	}
	return ids
}

// mesh is a Planner whose plans a simulated kernel follows.
type mesh struct {
	pl     *Planner
	kernel Observed
}

// step plans for the entries of nodes at now, commits, and applies.
func (m *mesh) step(t *testing.T, nodes []int, now time.Time) Plan {
	t.Helper()
	var es []Entry
	for _, n := range nodes {
		es = append(es, entry(n))
	}
	slices.SortFunc(es, func(a, b Entry) int { return strings.Compare(a.ServiceID, b.ServiceID) })
	res, err := m.pl.Plan(es, self, func() (Observed, error) { return m.kernel, nil }, now)
	if err != nil {
		t.Fatal(err)
	}
	m.pl.Commit(res)
	m.kernel = Applied(m.kernel, res.Plan)
	return res.Plan
}

// span is the nodes lo to hi.
func span(lo, hi int) []int {
	var out []int
	for n := lo; n <= hi; n++ {
		out = append(out, n)
	}
	return out
}

// TestBreakerWindow is the slow-drain attack on the circuit breaker:
// remove just under the threshold, wait out the grace, repeat. With a
// mesh of 20, a fraction of 0.5 and a floor of 3, eight removals go; five
// more within the hour would each have passed alone (5 of the 12 left),
// but the window counts 13 of the 20 it saw: the breaker holds them. An
// hour later the window has forgotten, and five of twelve go.
func TestBreakerWindow(t *testing.T) {
	m := &mesh{pl: &Planner{Rules: rules, Grace: time.Minute, MaxFraction: 0.5, Floor: 3}}
	step := func(nodes []int, now time.Time) Plan { t.Helper(); return m.step(t, nodes, now) }
	kernel := &m.kernel
	t0 := time.Unix(1000, 0)
	step(span(2, 21), t0)
	if len(kernel.Peers) != 20 {
		t.Fatalf("%d peers, want 20", len(kernel.Peers))
	}
	step(span(10, 21), t0.Add(time.Second)) // 8 leave
	if p := step(span(10, 21), t0.Add(2*time.Minute)); len(p.Remove) != 8 || p.Breaker {
		t.Fatalf("first round: %d removed, breaker %v; want 8 removed", len(p.Remove), p.Breaker)
	}
	step(span(15, 21), t0.Add(3*time.Minute)) // 5 more leave
	p := step(span(15, 21), t0.Add(5*time.Minute))
	if !p.Breaker || len(p.Remove) != 0 || len(kernel.Peers) != 12 {
		t.Fatalf("second round within the hour: breaker %v, %d removed, %d peers; want the breaker holding all 5",
			p.Breaker, len(p.Remove), len(kernel.Peers))
	}
	p = step(span(15, 21), t0.Add(2*time.Minute+BreakerWindow+time.Second))
	if p.Breaker || len(p.Remove) != 5 {
		t.Errorf("after the window: breaker %v, %d removed; want the 5 removed", p.Breaker, len(p.Remove))
	}
}

// TestBreakerWindowRelease: removals an operator released are not held
// against the next ones: after a released mass removal, one more node
// leaving goes after its grace.
func TestBreakerWindowRelease(t *testing.T) {
	m := &mesh{pl: &Planner{Rules: rules, Grace: time.Minute, MaxFraction: 0.5, Floor: 3}}
	step := func(lo, hi int, now time.Time) Plan { t.Helper(); return m.step(t, span(lo, hi), now) }
	pl := m.pl
	t0 := time.Unix(1000, 0)
	step(2, 21, t0)
	step(14, 21, t0.Add(time.Second)) // 12 of 20 leave
	if p := step(14, 21, t0.Add(2*time.Minute)); !p.Breaker {
		t.Fatal("12 of 20 leaving did not trip the breaker")
	}
	if n := pl.Release(); n != 12 {
		t.Fatalf("released %d, want 12", n)
	}
	if p := step(14, 21, t0.Add(3*time.Minute)); len(p.Remove) != 12 {
		t.Fatalf("%d removed after the release, want 12", len(p.Remove))
	}
	step(15, 21, t0.Add(4*time.Minute)) // one more leaves
	if p := step(15, 21, t0.Add(6*time.Minute)); p.Breaker || len(p.Remove) != 1 {
		t.Errorf("one more leaving after a release: breaker %v, %d removed; want it removed", p.Breaker, len(p.Remove))
	}
}

// TestMaxPeers: past the cap, the newest registrations are rejected with
// their reason; the kept peers stay sorted by node, and a cap the set fits
// changes nothing.
func TestMaxPeers(t *testing.T) {
	var es []Entry
	for _, n := range []int{5, 2, 9, 7, 3} {
		e := entry(n)
		e.CreateIndex = uint64(100 - n) // h9 registered first, h2 last
		es = append(es, e)
	}
	slices.SortFunc(es, func(a, b Entry) int { return strings.Compare(a.ServiceID, b.ServiceID) })
	pl := &Planner{Rules: rules, MaxPeers: 3}
	res, err := pl.Plan(es, self, func() (Observed, error) { return Observed{}, nil }, time.Unix(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	var kept, rejected []string
	for _, p := range res.Desired {
		kept = append(kept, p.Node)
	}
	for _, r := range res.Rejected {
		if r.Code != CodeMaxPeers || !strings.Contains(r.Reason, "at most 3 peers") {
			t.Errorf("rejection %+v", r)
		}
		rejected = append(rejected, r.Node)
	}
	slices.Sort(rejected)
	if diff := cmp.Diff([]string{"h5", "h7", "h9"}, kept); diff != "" {
		t.Errorf("kept (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"h2", "h3"}, rejected); diff != "" {
		t.Errorf("rejected (-want +got):\n%s", diff)
	}
	if len(res.Plan.Upsert) != 3 {
		t.Errorf("plan upserts %d peers, want 3", len(res.Plan.Upsert))
	}
	pl = &Planner{Rules: rules, MaxPeers: 5}
	if res, _ := pl.Plan(es, self, func() (Observed, error) { return Observed{}, nil }, time.Unix(0, 0)); len(res.Desired) != 5 || len(res.Rejected) != 0 {
		t.Errorf("a cap the set fits: %d peers, %d rejected", len(res.Desired), len(res.Rejected))
	}
}
