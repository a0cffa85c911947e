package agent

import (
	"context"
	"errors"
	"io/fs"
	"sync"
	"time"

	"meshd.dev/meshd/catalogsync"
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
}

// set takes a snapshot the watch delivered.
func (v *view) set(s catalogsync.Snapshot) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.snapshot, v.fromDisk = &s, false
}

// load takes the snapshot saved on disk.
func (v *view) load(saved snapshot.Saved) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.snapshot, v.fromDisk, v.savedAt = &saved.Snapshot, true, saved.SavedAt
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
