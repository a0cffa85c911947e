package gateway

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"meshd.dev/meshd/catalogsync"
	"meshd.dev/meshd/internal/loop"
	"meshd.dev/meshd/peers"
)

// How a gateway learns of changes to its records without reading all of
// them per change (DESIGN.md "Gateway peers"): every write of a record
// (create, replace, remove, expiry) is followed by a hint on the
// gateway's changes key, in the sequence the mesh's hints use
// (catalogsync.WriteHint: numbered, with a ring of the last ones). The
// gateway holds one blocking query on that key and reads the one record
// a hint names; the whole folder is read at start, every
// DefaultFullReadInterval, and at once when hints were missed.

// ChangesKey is gateway gw's change hint key.
func ChangesKey(gw string) string { return TreeKey(gw) + "changes" }

// DefaultFullReadInterval is how often a gateway reads its whole records
// folder: the anti-entropy for a hint that was never written (a writer
// that died between the record and its hint).
const DefaultFullReadInterval = 10 * time.Minute

// fullReadSpacing is the least time between two full reads that missed
// hints ask for.
const fullReadSpacing = 5 * time.Second

// saveSpacing is the least time between two saves of the records after
// hinted changes (a full read saves at once).
const saveSpacing = 10 * time.Second

// announce writes the hint for a change of record id on gateway gw, index
// being the change's KV index (or 0 when unknown). A failure loses
// nothing: the gateway sees the change at its next full read.
func announce(ctx context.Context, c *api.Client, gw, id string, index uint64) error {
	_, err := catalogsync.WriteHint(ctx, c, ChangesKey(gw), catalogsync.Hint{ConsulNode: gw, ServiceID: id, Index: max(index, 1)})
	if err != nil {
		return fmt.Errorf("%w of the change to %s (it sees it within %s): %w", ErrNotAnnounced, id, DefaultFullReadInterval, err)
	}
	return nil
}

// recordSet is a gateway's view of its records folder, merged from full
// reads and from reads of the single records hints name: each key keeps
// the index of the read that gave its value (or its absence), so that an
// older read never undoes a newer one.
type recordSet struct {
	pairs map[string]Pair
	at    map[string]uint64
	// version grows with every change of pairs: a reconcile whose records
	// did not change reuses the last desired state.
	version uint64
}

func newRecordSet() *recordSet {
	return &recordSet{pairs: map[string]Pair{}, at: map[string]uint64{}}
}

// list takes a full read at index.
func (s *recordSet) list(pairs []Pair, index uint64) {
	seen := make(map[string]bool, len(pairs))
	for _, p := range pairs {
		seen[p.Key] = true
		if s.at[p.Key] <= index {
			if old, ok := s.pairs[p.Key]; !ok || old.ModifyIndex != p.ModifyIndex || p.ModifyIndex == 0 {
				s.version++
			}
			s.pairs[p.Key], s.at[p.Key] = p, index
		}
	}
	for k, at := range s.at {
		if !seen[k] && at <= index {
			if _, ok := s.pairs[k]; ok {
				s.version++
			}
			delete(s.pairs, k)
			delete(s.at, k) // absent at index: nothing newer to keep
		}
	}
}

// one takes a read of a single key at index: its pair, or nil for none.
func (s *recordSet) one(key string, p *Pair, index uint64) {
	if s.at[key] > index {
		return
	}
	s.at[key] = index
	old, had := s.pairs[key]
	if p == nil {
		if had {
			s.version++
		}
		delete(s.pairs, key)
		return
	}
	if !had || old.ModifyIndex != p.ModifyIndex {
		s.version++
	}
	s.pairs[key] = *p
}

// drop forgets key (this gateway deleted it), as of the newest read of it.
func (s *recordSet) drop(key string) { s.one(key, nil, s.at[key]) }

// slice is the pairs in key order.
func (s *recordSet) slice() []Pair {
	out := make([]Pair, 0, len(s.pairs))
	for _, p := range s.pairs {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b Pair) int { return strings.Compare(a.Key, b.Key) })
	return out
}

// followRecords keeps r.records in line with the gateway's folder until
// ctx is done: the hint watch in one goroutine, full reads in this one.
func (r *Runner) followRecords(ctx context.Context, l *loop.Loop) {
	missed := make(chan struct{}, 1)
	miss := func(why string) {
		r.opts.Logger.Info("gateway record hints missed; reading every record", "why", why)
		select {
		case missed <- struct{}{}:
		default:
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.watcher.RunHints(ctx, ChangesKey(r.opts.Node), func(hs []catalogsync.Hint) {
			for _, h := range hs {
				if r.readRecord(ctx, h, miss, &r.recordReads) {
					l.Mark()
				}
			}
		}, func(why string, _ bool) { miss(why) })
	}()
	defer func() { <-done }()
	every := orDefault(r.opts.FullReadInterval, DefaultFullReadInterval)
	var lastFull time.Time
	for attempt := 0; ctx.Err() == nil; {
		if err := r.readAll(ctx); err != nil {
			attempt++
			r.opts.Logger.Warn("read gateway records failed; retrying after a backoff", "err", err, "attempt", attempt)
			if !sleep(ctx, loop.Backoff(attempt, time.Second, time.Minute)) {
				return
			}
			continue
		}
		attempt, lastFull = 0, time.Now()
		l.Mark()
		next := time.NewTimer(every + rand.N(every/10+1))
		select {
		case <-ctx.Done():
			next.Stop()
			return
		case <-next.C:
		case <-missed:
			next.Stop()
			if !sleep(ctx, time.Until(lastFull.Add(fullReadSpacing))) {
				return
			}
		}
	}
}

// readAll reads every record and saves them.
func (r *Runner) readAll(ctx context.Context) error {
	kvs, meta, err := r.opts.Consul.KV().List(PeersKey(r.opts.Node), (&api.QueryOptions{AllowStale: true, Datacenter: r.opts.Datacenter}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("read peers of gateway %s: %w", r.opts.Node, err)
	}
	read := pairs(kvs)
	r.mu.Lock()
	r.records.list(read, meta.LastIndex)
	r.synced, r.fromDisk = true, false
	r.fullReads++
	r.mu.Unlock()
	r.save(true)
	return nil
}

// readRecord reads the record hint h names and reports whether the view
// changed; count (guarded by r.mu) counts the read. A hint naming anything
// but one of this gateway's records is ignored; a failed read asks for a
// full one (miss).
func (r *Runner) readRecord(ctx context.Context, h catalogsync.Hint, miss func(string), count *uint64) bool {
	org, name, ok := strings.Cut(h.ServiceID, "/")
	if h.ConsulNode != r.opts.Node || !ok || !peers.IsDNSLabel(org) || !peers.IsDNSLabel(name) {
		r.opts.Logger.Debug("ignoring a change hint that names no record of this gateway", "node", h.ConsulNode, "record", h.ServiceID)
		return false
	}
	key := RecordKey(r.opts.Node, org, name)
	// A consistent read: the hint's writer wrote through the leader.
	kv, meta, err := r.opts.Consul.KV().Get(key, (&api.QueryOptions{Datacenter: r.opts.Datacenter}).WithContext(ctx))
	if err != nil {
		miss(fmt.Sprintf("record %s not read: %v", key, err))
		return false
	}
	var p *Pair
	if kv != nil {
		p = &Pair{Key: kv.Key, Value: kv.Value, CreateIndex: kv.CreateIndex, ModifyIndex: kv.ModifyIndex}
	}
	r.mu.Lock()
	before := r.records.pairs[key]
	r.records.one(key, p, meta.LastIndex)
	after, ok := r.records.pairs[key]
	(*count)++
	if r.jit != nil {
		// Known at once, not at the next reconcile: the user may connect
		// the moment create returns.
		r.jit.provisional(h.ServiceID, after, ok, r.records.version)
	}
	r.mu.Unlock()
	changed := !ok && before.Key != "" || ok && after.ModifyIndex != before.ModifyIndex
	if changed {
		r.save(false)
	}
	return changed
}

// save writes the records to SavedPath: at once after a full read, else
// at most every saveSpacing (a restart with Consul down applies what was
// saved; the next full read corrects it).
func (r *Runner) save(full bool) {
	if r.opts.SavedPath == "" {
		return
	}
	r.mu.Lock()
	if !full && time.Since(r.savedAt) < saveSpacing {
		r.mu.Unlock()
		return
	}
	r.savedAt = time.Now()
	read := r.records.slice()
	r.mu.Unlock()
	if err := saveRecords(r.opts.SavedPath, read, time.Now()); err != nil {
		r.opts.Logger.Error("save gateway records", "err", err)
	}
}

// sleep waits d or until ctx is done, and reports whether ctx is not.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// revalidate reads the records of the active peers again every
// ResyncInterval (a JIT gateway): a removal or expiry whose hint was lost
// cuts its user off within that, not at the next full read. It costs one
// read per active peer, nothing per idle record.
func (r *Runner) revalidate(ctx context.Context, l *loop.Loop) {
	every := orDefault(r.opts.ResyncInterval, 30*time.Second)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.mu.Lock()
		ids := make([]string, 0, len(r.jit.active))
		for k := range r.jit.active {
			if s, ok := r.jit.records[k]; ok {
				ids = append(ids, s.ID())
			}
		}
		r.mu.Unlock()
		changed := false
		for _, id := range ids {
			if r.readRecord(ctx, catalogsync.Hint{ConsulNode: r.opts.Node, ServiceID: id}, func(string) {}, &r.revalidations) {
				changed = true
			}
		}
		if changed {
			r.opts.Logger.Info("active user peers' records changed without a hint", "active", len(ids))
			l.Mark()
		}
	}
}
