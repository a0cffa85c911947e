package peers

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Planner turns catalog snapshots into plans, and holds every piece of
// memory that takes: the parse of each entry (ParseCache), the desired set
// of the last plan, what the kernel holds once the last plan was written
// (its model of the kernel), when each peer no entry asks for was first
// seen absent, and the removals an operator released. It picks the
// algorithm itself: against a kernel model it trusts, only what changed
// since the last plan is looked at (Changed, then Step); otherwise the
// whole desired set against the kernel as read (Track, then Diff). Both
// give the same plan (TestPlannerIncrementalMatchesFull).
//
// A Planner is used by one goroutine. The zero value plans with no
// removal grace and no circuit breaker; set the fields first.
type Planner struct {
	Rules Rules
	// Grace, MaxFraction and Floor are Removal's.
	Grace       time.Duration
	MaxFraction float64
	Floor       int
	// MaxPeers caps the desired set (zero: no cap): past it, the entries
	// registered last are rejected (CodeMaxPeers), so a flood of valid
	// entries cannot grow the device without bound, and the peers the mesh
	// had first keep their place.
	MaxPeers int
	// Prewrite, when set, writes a plan of peers and their routes to
	// add (Upsert and AddRoutes only). A whole plan against a kernel that
	// holds none of meshd's peers (a first sync) then writes the peers
	// Desire accepts, with their routes, while the later entries are still
	// being verified (the verification of thousands of signed entries
	// overlaps the device's own work), and plans what is left against the
	// kernel with them in it. It is called from another goroutine than
	// Plan's, never twice at once, and always before Plan returns.
	Prewrite func(Plan) error

	parses  ParseCache
	desired []Peer    // of the last plan
	model   *Observed // the kernel after the last committed plan; nil: read it
	// owned says the model's slices are the planner's alone (Applied made
	// them): Commit may then change them in place; planned is the model
	// the last Plan handed out, which Commit checks it is given back.
	owned       bool
	planned     Observed
	now         time.Time // of the last Plan
	absentSince map[wgtypes.Key]time.Time
	released    map[wgtypes.Key]bool
	window      breakerWindow
	trust       trustState // with Rules.Trust
	revoked     Revoked
	// withdrawals: the last serial verified or refused for each service
	// ID, so that each is counted once while the delta path carries it.
	withdrawn, refused   map[string]uint64
	withdrawnN, refusedN uint64
	// inPlace counts the plans PlanChanged made from the change alone.
	inPlace int
}

// breakerWindow remembers, for BreakerWindow, the removals made for their
// grace and the kernel's peer counts.
type breakerWindow struct {
	removed []event // removals committed, oldest first
	sizes   []event // kernel peer counts, oldest first, each larger than every later one
	changed bool    // a removal was added since Memory
}

type event struct {
	at time.Time
	n  int
}

// prune forgets what is older than the window.
func (w *breakerWindow) prune(now time.Time) {
	old := func(e event) bool { return now.Sub(e.at) > BreakerWindow }
	for len(w.removed) > 0 && old(w.removed[0]) {
		w.removed = w.removed[1:]
	}
	for len(w.sizes) > 0 && old(w.sizes[0]) {
		w.sizes = w.sizes[1:]
	}
}

// seen records a kernel of n peers: the largest within the window is
// sizes[0] (a monotonic queue).
func (w *breakerWindow) seen(now time.Time, n int) {
	for len(w.sizes) > 0 && w.sizes[len(w.sizes)-1].n <= n {
		w.sizes = w.sizes[:len(w.sizes)-1]
	}
	w.sizes = append(w.sizes, event{now, n})
}

func (w *breakerWindow) recent() (removed, peak int) {
	for _, e := range w.removed {
		removed += e.n
	}
	if len(w.sizes) > 0 {
		peak = w.sizes[0].n
	}
	return removed, peak
}

// Result is one plan with what it was computed from.
type Result struct {
	Desired  []Peer
	Rejected []Rejection
	// Observed is the kernel the plan was computed against: as read, or
	// the planner's model of it.
	Observed Observed
	Plan     Plan
}

// Trusts reports whether the planner has a model of the kernel, so that
// Plan will not call its observe function.
func (pl *Planner) Trusts() bool { return pl.model != nil }

// Forget drops the model of the kernel: the next Plan reads the kernel.
// Call it when something may have changed the kernel behind the planner's
// back (a failed write, a key rotation, a periodic resync).
func (pl *Planner) Forget() { pl.model = nil }

// Plan computes the plan that takes the kernel to what entries ask for.
// observe reads the kernel; it is called only when the planner has no
// model it trusts. Until Commit, the model is forgotten: a plan that is
// not written leaves the next Plan to read the kernel.
func (pl *Planner) Plan(entries []Entry, self Self, observe func() (Observed, error), now time.Time) (Result, error) {
	return pl.plan(entries, nil, false, self, observe, now)
}

// PlanChanged is Plan for entries (sorted by service ID) that differ from
// those the last Plan or PlanChanged was given only in the entries of the
// service IDs in changed (the catalog's delta: catalogsync.Snapshot's
// Changed): only those are parsed and judged, and the desired set is
// changed in place, so that a change costs what it touches, not the
// fleet. The previous Result's Desired is that same slice: read it no
// more once PlanChanged is called. Where the change cannot be taken
// alone (a conflict between entries, trust to judge again, the peer cap)
// it plans like Plan. changed nil says any entry may have changed: every
// entry is judged again (through the parse cache), with nothing taken
// from the list the last plan was given, which the caller may have
// changed in place since.
func (pl *Planner) PlanChanged(entries []Entry, changed []string, self Self, observe func() (Observed, error), now time.Time) (Result, error) {
	return pl.plan(entries, changed, true, self, observe, now)
}

func (pl *Planner) plan(entries []Entry, changed []string, delta bool, self Self, observe func() (Observed, error), now time.Time) (Result, error) {
	var res Result
	pl.now = now
	model := pl.model
	pl.model = nil
	if pl.Rules.Trust != nil {
		pl.checkTrust(now)
	}
	var (
		gone, came []Peer
		known      bool // gone and came are the change, from the delta
	)
	if delta {
		if changed != nil {
			res.Desired, res.Rejected, gone, came, known = pl.parses.patchIDs(entries, changed, self, pl.Rules, pl.withdrawn1)
		}
		if !known {
			pl.parses.lastValid = false // the list changed in place: compare nothing with it
		}
	}
	// A whole plan without a model reads the kernel first: an empty one
	// (a first sync) is written while the entries are judged.
	var (
		observed *Observed
		pre      *prewriter
		emit     func([]Peer)
	)
	if !known && model == nil && pl.Prewrite != nil && (pl.MaxPeers == 0 || len(entries) <= pl.MaxPeers) {
		o, err := observe()
		if err != nil {
			return res, err
		}
		observed = &o
		if len(o.Peers) == 0 {
			pre = startPrewrite(pl.Prewrite, o.Routes)
			emit = pre.emit
		}
	}
	if known {
		pl.inPlace++
	} else {
		res.Desired, res.Rejected = pl.parses.desireEmit(pl.withdraw(entries), self, pl.Rules, emit)
	}
	if delta {
		// The caller changes this list in place before the next plan: a
		// later Plan cannot find the change by comparing it.
		pl.parses.lastValid = false
	}
	if pl.MaxPeers > 0 && len(res.Desired) > pl.MaxPeers {
		res.Desired, res.Rejected = capPeers(res.Desired, res.Rejected, pl.MaxPeers)
		known = false
	}
	prev := pl.desired
	if known {
		prev = gone // the earlier set changed in place: what it had of the change
	}
	defer func() { pl.desired = res.Desired }()
	if model != nil {
		res.Observed = *model
		if pl.owned {
			pl.planned = *model
		}
	} else {
		pl.owned = false
		var err error
		switch {
		case pre != nil:
			written, werr := pre.wait()
			res.Observed = Applied(*observed, written)
			if werr != nil {
				// Some of a write may have landed: the kernel says what.
				res.Observed, err = observe()
			}
		case observed != nil:
			res.Observed = *observed
		default:
			res.Observed, err = observe()
		}
		if err != nil {
			return res, err
		}
	}
	if pl.released == nil {
		pl.released = map[wgtypes.Key]bool{}
	}
	pl.removeAtOnce(prev, res.Rejected, now)
	pl.window.prune(now)
	pl.window.seen(now, len(res.Observed.Peers))
	rm := Removal{Grace: pl.Grace, Now: now, MaxFraction: pl.MaxFraction, Floor: pl.Floor, Released: pl.released}
	rm.Recent, rm.Peak = pl.window.recent()
	incremental := false
	switch {
	case model != nil && known:
		incremental = true
	case model != nil:
		gone, came, incremental = Changed(pl.desired, res.Desired)
	}
	if incremental {
		pl.absentSince, res.Plan = Step(pl.absentSince, res.Desired, gone, came, res.Observed, rm)
	} else {
		pl.absentSince = Track(pl.absentSince, res.Desired, res.Observed, now)
		rm.AbsentSince = pl.absentSince
		res.Plan = Diff(res.Desired, res.Observed, rm)
	}
	maps.DeleteFunc(pl.released, func(k wgtypes.Key, _ bool) bool {
		_, absent := pl.absentSince[k]
		return !absent // back in the catalog, or gone
	})
	return res, nil
}

// maxInPlace is the most writes a plan may hold for Commit to update the
// model in place (each is a binary search and a move of the elements
// after it); a larger plan is merged into a new model (Applied).
const maxInPlace = 64

// Commit records that res's plan was written: the kernel now holds what
// Applied says, and the next Plan may diff against that alone. res is the
// last Plan's result; its Observed may change under Commit (the model is
// updated in place), so a caller reads it before committing.
func (pl *Planner) Commit(res Result) {
	if res.Plan.Expired > 0 {
		pl.window.removed = append(pl.window.removed, event{pl.now, res.Plan.Expired})
		pl.window.changed = true
	}
	next := res.Observed
	// The model is the planner's own (sorted, unique, shared with nobody
	// but the last Result) once Applied made it; one read from the kernel
	// is not, until a plan goes through Applied.
	owned := pl.owned && sameSlice(res.Observed.Peers, pl.planned.Peers) && sameSlice(res.Observed.Routes, pl.planned.Routes)
	pl.owned, pl.planned = false, Observed{}
	switch {
	case res.Plan.Empty():
		pl.owned = owned
	case owned && len(res.Plan.Upsert)+len(res.Plan.Remove)+len(res.Plan.AddRoutes)+len(res.Plan.DelRoutes) <= maxInPlace:
		// A change of a few peers: the model the planner owns is updated
		// in place, without copying (and collecting) a kernel of
		// thousands.
		applyInPlace(&next, res.Plan)
		pl.owned = true
	default:
		next = Applied(res.Observed, res.Plan)
		pl.owned = true
	}
	pl.model = &next
}

// Desired is the desired set of the last plan (sorted by node).
func (pl *Planner) Desired() []Peer { return pl.desired }

// Release lets every removal now pending go ahead once its grace has
// ended, despite the circuit breaker, and returns how many peers that is.
func (pl *Planner) Release() int {
	if pl.released == nil {
		pl.released = map[wgtypes.Key]bool{}
	}
	for k := range pl.absentSince {
		pl.released[k] = true
	}
	return len(pl.released)
}

// Released is how many peers the operator's release still covers.
func (pl *Planner) Released() int { return len(pl.released) }

// capPeers keeps the max oldest peers of desired (by CreateIndex, then
// node), in desired's order, and rejects the rest.
func capPeers(desired []Peer, rejected []Rejection, max int) ([]Peer, []Rejection) {
	byAge := slices.Clone(desired)
	slices.SortFunc(byAge, func(a, b Peer) int {
		return cmp.Or(cmp.Compare(a.CreateIndex, b.CreateIndex), strings.Compare(a.Node, b.Node))
	})
	over := make(map[string]bool, len(byAge)-max)
	for _, p := range byAge[max:] {
		over[p.Node] = true
	}
	kept := make([]Peer, 0, max)
	rejected = slices.Clone(rejected)
	for _, p := range desired {
		if !over[p.Node] {
			kept = append(kept, p)
			continue
		}
		rejected = append(rejected, Rejection{Node: p.Node, Code: CodeMaxPeers,
			Reason: fmt.Sprintf("over max_peers: this host holds at most %d peers, the oldest registrations first", max)})
	}
	return kept, rejected
}

// checkTrust readies the trust checks for a plan at now: past the soonest
// expiry of an accepted credential, every entry is judged again.
func (pl *Planner) checkTrust(now time.Time) {
	st := &pl.trust
	if st.serials == nil {
		st.serials = map[string]uint64{}
	}
	st.now, st.revoked = now, pl.revoked
	if !st.nextExpiry.IsZero() && !now.Before(st.nextExpiry) {
		pl.parses.patchable = false
	}
	pl.parses.trust = st
}

// Revoke takes the authority's revocations (verified by the caller); a
// change judges every entry again, and the peers of revoked nodes and
// identities are removed at once.
func (pl *Planner) Revoke(r Revoked) {
	if !r.equal(pl.revoked) {
		pl.revoked = r
		pl.parses.patchable = false
	}
}

// removeAtOnce starts the removal of the peers (of prev, the last desired
// set, sorted by node) whose node the authority
// no longer vouches for (expired, revoked) with their grace already over
// and the breaker released for them: the authority's word is not a
// catalog mishap to wait out.
func (pl *Planner) removeAtOnce(prev []Peer, rejected []Rejection, now time.Time) {
	for _, r := range rejected {
		if r.Code != CodeExpired && r.Code != CodeRevoked {
			continue
		}
		i, ok := slices.BinarySearchFunc(prev, r.Node, func(p Peer, node string) int { return strings.Compare(p.Node, node) })
		if !ok {
			continue
		}
		if pl.absentSince == nil {
			pl.absentSince = map[wgtypes.Key]time.Time{}
		}
		k := prev[i].PublicKey
		pl.absentSince[k] = now.Add(-pl.Grace)
		pl.released[k] = true
	}
}

// Memory is what a Planner keeps across restarts (Planner.Memory,
// Planner.Restore): the highest serial accepted for each node, so that an
// entry replayed from before a key rotation is refused after a restart
// too; and the circuit breaker's window, so that removals made just
// before a restart still count.
type Memory struct {
	Serials map[string]uint64 `json:"serials"`
	// Removed are the removals made for their grace, and Sizes the
	// largest kernel peer counts, within BreakerWindow (oldest first).
	Removed []Event `json:"removed,omitempty"`
	Sizes   []Event `json:"sizes,omitempty"`
}

// Event is a count at a time.
type Event struct {
	At time.Time `json:"at"`
	N  int       `json:"n"`
}

// Memory returns what to keep across restarts; changed says whether a
// serial grew or a removal was made since the last call.
func (pl *Planner) Memory() (m Memory, changed bool) {
	changed, pl.trust.changed, pl.window.changed = pl.trust.changed || pl.window.changed, false, false
	m.Serials = maps.Clone(pl.trust.serials)
	for _, e := range pl.window.removed {
		m.Removed = append(m.Removed, Event{e.at, e.n})
	}
	for _, e := range pl.window.sizes {
		m.Sizes = append(m.Sizes, Event{e.at, e.n})
	}
	return m, changed
}

// Restore takes what Memory returned before a restart.
func (pl *Planner) Restore(m Memory) {
	pl.trust.serials = maps.Clone(m.Serials)
	if pl.trust.serials == nil {
		pl.trust.serials = map[string]uint64{}
	}
	pl.window = breakerWindow{}
	for _, e := range m.Removed {
		pl.window.removed = append(pl.window.removed, event{e.At, e.N})
	}
	for _, e := range m.Sizes {
		pl.window.seen(e.At, e.N)
	}
}

// NextExpiry is when the soonest credential of an accepted peer expires
// (zero: none): a plan is due then, to remove it.
func (pl *Planner) NextExpiry() time.Time { return pl.trust.nextExpiry }

// Parses counts the entries parsed and verified so far: an unchanged entry
// is parsed once, however often it is planned.
func (pl *Planner) Parses() uint64 { return pl.parses.parses }

// prewriter writes the peers a first plan accepts as Desire hands them
// out, with their routes, one write at a time, each of all that came since
// the last.
type prewriter struct {
	write   func(Plan) error
	have    []netip.Prefix // the kernel's routes (sorted): not added again
	mu      sync.Mutex
	pending []Peer
	closed  bool
	wake    chan struct{}
	done    chan struct{}
	written Plan  // what was written; after done
	err     error // the first write's error; after done
}

func startPrewrite(write func(Plan) error, have []netip.Prefix) *prewriter {
	w := &prewriter{write: write, have: have, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go w.run()
	return w
}

func (w *prewriter) emit(ps []Peer) {
	w.mu.Lock()
	w.pending = append(w.pending, ps...)
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *prewriter) run() {
	defer close(w.done)
	for {
		<-w.wake
		w.mu.Lock()
		batch, closed := w.pending, w.closed
		w.pending = nil
		w.mu.Unlock()
		if len(batch) > 0 && w.err == nil {
			p := Plan{Upsert: batch}
			for _, peer := range batch {
				if _, ok := slices.BinarySearchFunc(w.have, peer.Prefix, netip.Prefix.Compare); !ok {
					p.AddRoutes = append(p.AddRoutes, peer.Prefix)
				}
			}
			if w.err = w.write(p); w.err == nil {
				w.written.Upsert = append(w.written.Upsert, p.Upsert...)
				w.written.AddRoutes = append(w.written.AddRoutes, p.AddRoutes...)
			}
		}
		if closed {
			return
		}
	}
}

// wait writes what is left and returns all that was written, and the
// error that stopped the writes.
func (w *prewriter) wait() (Plan, error) {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
	<-w.done
	return w.written, w.err
}
