package agent

import (
	"context"
	"errors"
	"io/fs"
	"slices"
	"strings"
	"sync"
	"time"

	"meshd.dev/meshd/catalogsync"
	"meshd.dev/meshd/peers"
	"meshd.dev/meshd/snapshot"
)

// view is the catalog as the loop sees it: the last whole view the watch
// delivered with the deltas since put in, or, until the catalog answers,
// the snapshot saved on disk. The watch's deliveries wait (set) until the
// loop takes them (take), which puts them into its own list in place: a
// change costs what it touches, not a copy of thousands of entries. The
// other methods may be called from any goroutine.
type view struct {
	mu sync.Mutex
	// cur is the view as the loop last took it; its Entries are changed
	// in place by take (under mu), read by the loop without it.
	cur *catalogsync.Snapshot
	// fromDisk is set while cur is the saved one, read at start, and no
	// catalog read has succeeded yet.
	fromDisk bool
	savedAt  time.Time // when the snapshot file was last written
	gen      uint64    // counts the changes to cur
	// What the watch delivered since the loop's last take: a whole view
	// (full), and the entries of each ID the deltas since changed (the
	// last delta of an ID holds all its entries).
	full        *catalogsync.Snapshot
	deltas      map[string][]peers.Entry
	index       uint64
	revocations [][]byte
	pending     bool
	again       bool // plan everything at the next take
}

// set takes a snapshot the watch delivered.
func (v *view) set(s catalogsync.Snapshot) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.fromDisk, v.pending = false, true
	v.index, v.revocations = s.Index, s.Revocations
	if !s.Delta {
		v.full, v.deltas = &s, nil
		return
	}
	if v.deltas == nil {
		v.deltas = map[string][]peers.Entry{}
	}
	for _, id := range s.Changed {
		i, j := entriesOf(s.Entries, id)
		v.deltas[id] = s.Entries[i:j]
	}
}

// take returns the view for the loop to plan, with the service IDs
// changed since the view it took last (nil: any may have; a full plan),
// and whether it took something the watch delivered since. Only the loop
// calls it.
func (v *view) take() (_ *catalogsync.Snapshot, changed []string, took bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	full, deltas, again := v.full, v.deltas, v.again
	v.full, v.deltas, v.again = nil, nil, false
	if !v.pending {
		if v.cur == nil || again {
			return v.cur, nil, false
		}
		return v.cur, []string{}, false
	}
	v.pending = false
	v.gen++
	if full != nil {
		v.cur = full // a whole view is the receiver's to change
		again = true
	}
	if v.cur == nil {
		return nil, nil, false
	}
	ids := make([]string, 0, len(deltas))
	for id := range deltas {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var delta []peers.Entry
	for _, id := range ids {
		delta = append(delta, deltas[id]...)
	}
	next := *v.cur
	next.Entries = catalogsync.ApplyDelta(next.Entries, ids, delta)
	next.Index, next.Revocations = v.index, v.revocations
	*v.cur = next
	if again {
		return v.cur, nil, true
	}
	return v.cur, ids, true
}

// replan makes the next take a full one: what the last take returned was
// not all planned.
func (v *view) replan() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.again = true
}

// load takes the snapshot saved on disk.
func (v *view) load(saved snapshot.Saved) {
	v.mu.Lock()
	defer v.mu.Unlock()
	// Sorted by service ID, as every catalog read is (a file edited by
	// hand may not be).
	slices.SortStableFunc(saved.Entries, func(a, b peers.Entry) int { return strings.Compare(a.ServiceID, b.ServiceID) })
	v.cur, v.fromDisk, v.savedAt = &saved.Snapshot, true, saved.SavedAt
	v.again = true
	v.gen++
}

func (v *view) saved(at time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.savedAt = at
}

// info is what status shows of the view: its entries (-1 before any),
// whether it is the one from disk, and when the file was last written.
func (v *view) info() (entries int, fromDisk bool, savedAt time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	entries = -1
	if v.cur != nil {
		entries = len(v.cur.Entries)
	}
	return entries, v.fromDisk, v.savedAt
}

// copyIfChanged returns a copy of the view for the saver when it changed
// since generation gen (and is not the one from disk), with its
// generation.
func (v *view) copyIfChanged(gen uint64) (*catalogsync.Snapshot, uint64) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.cur == nil || v.fromDisk || v.gen == gen {
		return nil, gen
	}
	s := *v.cur
	s.Entries = slices.Clone(s.Entries)
	return &s, v.gen
}

// entriesOf is where the entries of service ID id are in entries (sorted
// by ID): [i, j).
func entriesOf(entries []peers.Entry, id string) (i, j int) {
	i = idRange(entries, id)
	j = i
	for j < len(entries) && entries[j].ServiceID == id {
		j++
	}
	return i, j
}

func (a *Agent) loadSnapshot() {
	if a.opts.SnapshotPath == "" {
		return
	}
	saved, err := snapshot.Load(a.opts.SnapshotPath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		a.logger.Info("no saved catalog snapshot; waiting for the catalog", "path", a.opts.SnapshotPath)
		return
	case err != nil:
		a.logger.Error("ignoring unreadable catalog snapshot", "err", err)
		return
	}
	a.view.load(saved)
	a.logger.Info("applying saved catalog snapshot until the catalog answers",
		"entries", len(saved.Entries), "index", saved.Index, "saved_at", saved.SavedAt)
}

// Snapshot writes are spaced by perNodeSpacing of the entries: a large
// catalog is megabytes of JSON, and a churning one must not cost a file
// write per change. The kernel keeps whatever was applied since; a
// snapshot a few seconds (at 10,000 nodes, up to 50 s) old only means a
// node added since is held through its grace after a restart without
// Consul, not removed.

// saveSnapshots writes the newest catalog read whenever one is signalled on
// saves, at most once per perNodeSpacing, and once more when ctx ends if
// a read is still unsaved.
func (a *Agent) saveSnapshots(ctx context.Context, saves <-chan struct{}) {
	var gen uint64
	var enc snapshot.Encoder
	spacing := perNodeSpacing(0)
	save := func() {
		var s *catalogsync.Snapshot
		if s, gen = a.view.copyIfChanged(gen); s != nil {
			a.saveSnapshot(&enc, *s, time.Now())
			spacing = perNodeSpacing(len(s.Entries))
		}
	}
	for {
		select {
		case <-ctx.Done():
			save()
			return
		case <-saves:
			save()
		}
		select {
		case <-ctx.Done():
			save()
			return
		case <-time.After(spacing):
		}
	}
}

func (a *Agent) saveSnapshot(enc *snapshot.Encoder, s catalogsync.Snapshot, now time.Time) {
	if a.opts.SnapshotPath == "" {
		return
	}
	if err := enc.Save(a.opts.SnapshotPath, s, now); err != nil {
		a.logger.Error("save catalog snapshot", "err", err)
		return
	}
	a.view.saved(now)
}
