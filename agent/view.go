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

// view is the catalog as the loop sees it: the last snapshot the watch
// delivered or, until the catalog answers, the one saved on disk. Its
// methods may be called from any goroutine.
type view struct {
	mu       sync.Mutex
	snapshot *catalogsync.Snapshot
	// fromDisk is set while snapshot is the saved one, read at start, and
	// no catalog read has succeeded yet.
	fromDisk bool
	savedAt  time.Time // when the snapshot file was last written
	// changed are the service IDs whose entries changed since the loop
	// last took the snapshot (take), when every delivery since was a
	// delta; full says one was not (or nothing was taken yet).
	changed map[string]struct{}
	full    bool
}

// set takes a snapshot the watch delivered.
func (v *view) set(s catalogsync.Snapshot) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.snapshot, v.fromDisk = &s, false
	if !s.Delta {
		v.full, v.changed = true, nil
		return
	}
	if v.full {
		return
	}
	if v.changed == nil {
		v.changed = map[string]struct{}{}
	}
	for _, id := range s.Changed {
		v.changed[id] = struct{}{}
	}
}

// take returns the snapshot for the loop to plan, with the service IDs
// changed since the snapshot it took last (nil: any may have; a full
// plan), and starts counting changes afresh.
func (v *view) take() (*catalogsync.Snapshot, []string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	var changed []string
	if !v.full && v.snapshot != nil {
		changed = make([]string, 0, len(v.changed))
		for id := range v.changed {
			changed = append(changed, id)
		}
	}
	v.full, v.changed = false, nil
	return v.snapshot, changed
}

// again makes the next take a full one: what the last take returned was
// not planned.
func (v *view) again() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.full, v.changed = true, nil
}

// load takes the snapshot saved on disk.
func (v *view) load(saved snapshot.Saved) {
	v.mu.Lock()
	defer v.mu.Unlock()
	// Sorted by service ID, as every catalog read is (a file edited by
	// hand may not be).
	slices.SortStableFunc(saved.Entries, func(a, b peers.Entry) int { return strings.Compare(a.ServiceID, b.ServiceID) })
	v.snapshot, v.fromDisk, v.savedAt = &saved.Snapshot, true, saved.SavedAt
	v.full, v.changed = true, nil
}

func (v *view) saved(at time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.savedAt = at
}

// get returns the snapshot (nil before any), whether it is the one from
// disk, and when the file was last written.
func (v *view) get() (s *catalogsync.Snapshot, fromDisk bool, savedAt time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.snapshot, v.fromDisk, v.savedAt
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
	var saved *catalogsync.Snapshot
	var enc snapshot.Encoder // marshals only the entries that changed
	spacing := perNodeSpacing(0)
	save := func() {
		s, fromDisk, _ := a.view.get()
		if s != nil && s != saved && !fromDisk {
			a.saveSnapshot(&enc, *s, time.Now())
			saved = s
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
