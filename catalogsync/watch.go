package catalogsync

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"golang.org/x/time/rate"

	"meshd.dev/meshd/internal/loop"
	"meshd.dev/meshd/peers"
)

// ErrStale is a catalog answer from a server too long out of touch with
// its leader (Watcher.MaxStale).
var ErrStale = errors.New("catalog answer too stale")

// Snapshot is one read of the meshd service.
type Snapshot struct {
	Index   uint64
	Entries []peers.Entry
	// ReadAt is when the read of the whole list under this view was sent
	// (zero when unknown: a view saved on disk). What the view lacks was
	// not in the catalog as that read saw it: a change made just before
	// may be missing still (see the agent's registration check).
	ReadAt time.Time
	// Revocations are the values under RevocationsPrefix, unverified (the
	// agent verifies them against its authorities).
	Revocations [][]byte
	// Delta, set by Catalog.Watch, says that the view differs from the
	// one it delivered before only in the entries of the service IDs in
	// Changed (a hint's read), and Entries holds only those (ApplyDelta
	// puts them into the last view); without it, Entries is the whole
	// view (a read of the whole list), the receiver's to keep and change.
	Delta   bool
	Changed []string
}

// RevocationsPrefix is the KV folder of the authority's signed
// revocations (meshd authority revoke): one key per revoked node
// ("node-<name>") or identity ("identity-<hex>").
const RevocationsPrefix = "meshd/trust/revocations/"

// State is what the watch knows about the catalog, for status output.
type State struct {
	Reachable bool
	LastIndex uint64
	// LastGoodRead is when a read last succeeded (zero before the first).
	LastGoodRead time.Time
	LastError    string
	// Reads counts successful reads; Delivered counts the snapshots passed
	// on (reads whose content changed).
	Reads, Delivered uint64
	// Hints counts the hints that named another node's entry (Catalog);
	// HintReads the instances they made this node read (a hint the list
	// already has is not read); HintsCarried the hints whose entry came in
	// the hint itself (not read); HintsApplied the reads and carried
	// entries newer than the list they went into.
	Hints, HintReads, HintsCarried, HintsApplied uint64
	// RingReads counts reads of the hint ring (a wake skipped hints);
	// Gaps the times hints were missed that the ring could not give back,
	// each answered by a read of the whole list, and CatchUps the reads of
	// what was signed since the last list that came first (Catalog).
	RingReads, Gaps, CatchUps uint64
	// OlderKept counts instance versions a list showed older than one an
	// earlier list had, which the Catalog kept instead.
	OlderKept uint64
}

// Watcher watches the instances of one service (Run) or a KV folder
// (RunKV); one Watcher runs one watch.
type Watcher struct {
	Client *api.Client
	// HTTP, when set, reads the service watch's responses directly (see
	// HTTP); Client still serves everything else.
	HTTP       *HTTP
	Service    string
	Datacenter string
	Logger     *slog.Logger
	// WaitTime bounds one blocking query (default 5m).
	WaitTime time.Duration
	// Limiter spaces wakes (default 10/s with a burst of 5).
	Limiter *rate.Limiter
	// MinBackoff and MaxBackoff bound the wait after an error (defaults
	// 250ms and 10s: a fleet retries at most every 10s, spread by jitter).
	MinBackoff, MaxBackoff time.Duration
	// MaxStale, when set, refuses a service read whose answering server
	// last heard from the leader longer ago (ErrStale).
	MaxStale time.Duration
	// ReadEvery, when set, spaces the service watch's reads instead of
	// Limiter: each blocking query waits at most ReadEvery, and the next
	// starts ReadEvery (plus up to a tenth, random) after the last began,
	// so the whole list is read about once per ReadEvery whether the
	// catalog is idle or churning, and a change after a quiet spell is
	// read at once; ReadNow reads at once between queries.
	ReadEvery time.Duration
	// ReadNowEvery spaces the reads ReadNow asks for (default 5s).
	ReadNowEvery time.Duration

	mu      sync.Mutex
	state   State
	readNow chan struct{}
}

// ReadNow makes a watch with ReadEvery read the whole list at once (non
// blocking), or as soon as ReadNowEvery allows after the last such read.
// A blocking query in flight is left to finish first: it returns as soon
// as the list changes past the last read, so until it returns the list
// has nothing newer; the read asked for follows it. Asks while one is
// pending are one.
func (w *Watcher) ReadNow() {
	select {
	case w.kick() <- struct{}{}:
	default:
	}
}

func (w *Watcher) kick() chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.readNow == nil {
		w.readNow = make(chan struct{}, 1)
	}
	return w.readNow
}

// State returns the watch's current view of the catalog.
func (w *Watcher) State() State {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.state
}

// NextIndex applies the index rules to a query's result: an index that
// went backwards resets to 0 (the next read is a full, non-blocking one), and
// an index of 0 becomes 1 so that the next query blocks.
func NextIndex(prev, got uint64) uint64 {
	switch {
	case got < prev:
		return 0
	case got == 0:
		return 1
	}
	return got
}

// Run watches until ctx is done, calling deliver with every snapshot whose
// content differs from the last one delivered (the first always is).
// deliver runs on Run's goroutine and must not block for long.
func (w *Watcher) Run(ctx context.Context, deliver func(Snapshot)) error {
	var sent time.Time // when the last read was sent (read and deliver run on this goroutine)
	read := func(q *api.QueryOptions) ([]peers.Entry, uint64, error) {
		var (
			entries []peers.Entry
			meta    *api.QueryMeta
			err     error
		)
		sent = time.Now()
		if w.HTTP != nil {
			entries, meta, err = w.HTTP.Service(q.Context(), w.Service, q)
		} else {
			var es []*api.ServiceEntry
			es, meta, err = w.Client.Health().Service(w.Service, "", false, q)
			entries = Convert(es)
		}
		if err != nil {
			return nil, 0, err
		}
		// A stale read may come from a server cut off from the leader for
		// long: what it says may be long past (a rotated-out key). Such an
		// answer is not applied; the next read may reach another server.
		if w.MaxStale > 0 && meta.LastContact > w.MaxStale {
			return nil, 0, fmt.Errorf("%w: the answering server last heard from the leader %s ago (catalog.max_stale %s)",
				ErrStale, meta.LastContact.Round(time.Millisecond), w.MaxStale)
		}
		return entries, meta.LastIndex, nil
	}
	got := func(entries []peers.Entry, index uint64) {
		deliver(Snapshot{Index: index, Entries: entries, ReadAt: sent})
	}
	if w.ReadEvery > 0 {
		return w.spaced(ctx, read, got)
	}
	return follow(ctx, w, "service "+w.Service, read, sameEntries, got)
}

// RunKV watches the KV folder prefix the same way (one blocking query, the
// same index rules, rate limit and backoff), calling deliver with the pairs
// under it whenever a key was added, changed or deleted.
func (w *Watcher) RunKV(ctx context.Context, prefix string, deliver func(api.KVPairs, uint64)) error {
	read := func(q *api.QueryOptions) (api.KVPairs, uint64, error) {
		pairs, meta, err := w.Client.KV().List(prefix, q)
		if err != nil {
			return nil, 0, err
		}
		return pairs, meta.LastIndex, nil
	}
	// A pair's ModifyIndex changes with every write to it, so keys and
	// indexes tell a change without comparing values.
	same := func(a, b api.KVPairs) bool {
		return slices.EqualFunc(a, b, func(x, y *api.KVPair) bool { return x.Key == y.Key && x.ModifyIndex == y.ModifyIndex })
	}
	return follow(ctx, w, "keys "+prefix, read, same, deliver)
}

// follow is the blocking-query loop of every watch: read with the last
// index, deliver what differs from the last delivery, rate-limit wakes, back
// off with jitter on errors.
func follow[T any](ctx context.Context, w *Watcher, what string, read func(*api.QueryOptions) (T, uint64, error), same func(a, b T) bool, deliver func(T, uint64)) error {
	waitTime := cmp.Or(w.WaitTime, 5*time.Minute)
	limiter := w.Limiter
	if limiter == nil {
		limiter = rate.NewLimiter(rate.Every(100*time.Millisecond), 5)
	}
	state := followState[T]{what: what, same: same, deliver: deliver}
	for {
		if err := limiter.Wait(ctx); err != nil {
			return ctx.Err()
		}
		q := &api.QueryOptions{
			AllowStale: true,
			WaitIndex:  state.index,
			WaitTime:   waitTime,
			Datacenter: w.Datacenter,
		}
		got, lastIndex, err := read(q.WithContext(ctx))
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err := state.took(ctx, w, got, lastIndex, err); err != nil {
			return err
		}
	}
}

// followState is what a watch's loop remembers between reads.
type followState[T any] struct {
	what      string
	same      func(a, b T) bool
	deliver   func(T, uint64)
	index     uint64 // the index the next read waits on
	last      T
	delivered bool
	failures  int
}

// took handles one read's result: on an error it backs off (returning
// only ctx's error), else it applies the index rules, counts the read and
// delivers what changed.
func (f *followState[T]) took(ctx context.Context, w *Watcher, got T, lastIndex uint64, err error) error {
	logger := w.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err != nil {
		// The servers may come back with a lower index (restored or
		// rebuilt); a blocking query on the old index would then stall
		// for the whole WaitTime. Read afresh.
		f.index = 0
		f.failures++
		d := loop.Backoff(f.failures, cmp.Or(w.MinBackoff, 250*time.Millisecond), cmp.Or(w.MaxBackoff, 10*time.Second))
		w.setState(func(s *State) { s.Reachable = false; s.LastError = err.Error() })
		logger.Warn("catalog read failed", "watch", f.what, "err", err, "retry_in", d.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
		}
		return nil
	}
	f.failures = 0
	f.index = NextIndex(f.index, lastIndex)
	changed := !f.delivered || !f.same(f.last, got)
	w.setState(func(s *State) {
		s.Reachable, s.LastIndex, s.LastGoodRead, s.LastError = true, lastIndex, time.Now(), ""
		s.Reads++
		if changed {
			s.Delivered++
		}
	})
	if !changed {
		logger.Debug("catalog woke without a change", "watch", f.what, "index", lastIndex)
		return nil
	}
	f.last, f.delivered = got, true
	logger.Debug("catalog changed", "watch", f.what, "index", lastIndex)
	f.deliver(got, lastIndex)
	return nil
}

// spaced is follow for a watch with ReadEvery: the same index rules,
// change detection and backoff, reads spaced by ReadEvery instead of a
// token bucket, and ReadNow answered with a non-blocking read.
func (w *Watcher) spaced(ctx context.Context, read func(*api.QueryOptions) ([]peers.Entry, uint64, error), deliver func([]peers.Entry, uint64)) error {
	kick := w.kick()
	every := w.ReadEvery
	nowEvery := cmp.Or(w.ReadNowEvery, 5*time.Second)
	var (
		next      time.Time // no spaced read before
		lastFresh time.Time // the last read ReadNow asked for
		pending   bool      // a ReadNow not yet answered
	)
	// turn waits for the next read and says whether it is one ReadNow
	// asked for.
	turn := func() (bool, error) {
		for {
			now := time.Now()
			at := next
			if pending {
				f := lastFresh.Add(nowEvery)
				if !f.After(now) {
					pending, lastFresh = false, now
					return true, nil
				}
				at = minTime(at, f)
			}
			if !at.After(now) {
				fresh := pending
				if fresh {
					pending, lastFresh = false, now
				}
				return fresh, nil
			}
			t := time.NewTimer(at.Sub(now))
			select {
			case <-ctx.Done():
				t.Stop()
				return false, ctx.Err()
			case <-t.C:
			case <-kick:
				t.Stop()
				pending = true
			}
		}
	}
	state := followState[[]peers.Entry]{what: "service " + w.Service, same: sameEntries, deliver: deliver}
	for {
		fresh, err := turn()
		if err != nil {
			return err
		}
		q := &api.QueryOptions{AllowStale: true, WaitIndex: state.index, WaitTime: every, Datacenter: w.Datacenter}
		if fresh {
			q.WaitIndex = 0
		}
		start := time.Now()
		next = start.Add(every + rand.N(every/10+1))
		got, lastIndex, err := read(q.WithContext(ctx))
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			next = time.Time{} // after the backoff, read again at once
		}
		if err := state.took(ctx, w, got, lastIndex, err); err != nil {
			return err
		}
	}
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func (w *Watcher) setState(f func(*State)) {
	w.mu.Lock()
	defer w.mu.Unlock()
	f(&w.state)
}

// Convert turns health endpoint results into catalog entries, sorted by
// service ID so that equal content compares equal.
func Convert(in []*api.ServiceEntry) []peers.Entry {
	out := make([]peers.Entry, 0, len(in))
	for _, se := range in {
		if se == nil || se.Service == nil {
			continue
		}
		out = append(out, peers.Entry{
			ServiceID:   se.Service.ID,
			Meta:        se.Service.Meta,
			Tags:        se.Service.Tags,
			CreateIndex: se.Service.CreateIndex,
			ModifyIndex: se.Service.ModifyIndex,
			Health:      se.Checks.AggregatedStatus(),
		})
	}
	slices.SortFunc(out, func(a, b peers.Entry) int { return strings.Compare(a.ServiceID, b.ServiceID) })
	return out
}
