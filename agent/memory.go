package agent

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"time"

	"meshd.dev/meshd/internal/atomicfile"
	"meshd.dev/meshd/peers"
)

// memoryFile is the file at Options.MemoryPath: what the planner keeps
// across restarts (peers.Memory): the highest serial accepted for each
// node, so that an entry replayed from before a node's key rotation is
// refused after this host restarts too, and the circuit breaker's window,
// so that removals made just before a restart still count.
type memoryFile struct {
	Version int `json:"version"`
	peers.Memory
}

func (a *Agent) loadMemory() {
	if a.opts.MemoryPath == "" {
		return
	}
	b, err := os.ReadFile(a.opts.MemoryPath)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	var f memoryFile
	if err == nil {
		err = json.Unmarshal(b, &f)
	}
	if err != nil || f.Version != 1 {
		// Unreadable: replays are refused again once this host has seen
		// each node's current entry, and the breaker counts from now.
		a.logger.Error("ignoring unreadable planner memory", "path", a.opts.MemoryPath, "err", err, "version", f.Version)
		return
	}
	a.planner.Restore(f.Memory)
}

// saveMemory writes the planner's memory when a serial grew or a removal
// was made, at most once per perNodeSpacing of its serials (serials grow
// with every signed change in the fleet, and the file holds one per node;
// force: now, as when
// stopping). It returns when it wants to be called again, or zero.
func (a *Agent) saveMemory(now time.Time, force bool) time.Time {
	if a.opts.MemoryPath == "" {
		return time.Time{}
	}
	if !force && now.Before(a.memory.next) {
		return a.memory.next
	}
	m, changed := a.planner.Memory()
	if !changed && !a.memory.dirty && !force {
		return time.Time{}
	}
	a.memory.next = now.Add(perNodeSpacing(len(m.Serials)))
	b, err := json.Marshal(memoryFile{Version: 1, Memory: m})
	if err == nil {
		err = atomicfile.WriteFile(a.opts.MemoryPath, b, 0o600)
	}
	a.memory.dirty = err != nil
	if err != nil {
		a.logger.Error("save planner memory", "err", err)
		return a.memory.next
	}
	return time.Time{}
}
