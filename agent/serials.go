package agent

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"time"

	"meshd.dev/meshd/internal/atomicfile"
)

// serialsFile is the file at Options.SerialsPath: the highest serial
// accepted for each node, so that an entry replayed from before a node's
// key rotation is refused after this host restarts too.
type serialsFile struct {
	Version int               `json:"version"`
	Serials map[string]uint64 `json:"serials"`
}

// serialsInterval spaces writes of the file: serials grow with every
// signed change in the fleet.
const serialsInterval = 5 * time.Second

func (a *Agent) loadSerials() {
	if a.opts.SerialsPath == "" {
		return
	}
	b, err := os.ReadFile(a.opts.SerialsPath)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	var f serialsFile
	if err == nil {
		err = json.Unmarshal(b, &f)
	}
	if err != nil || f.Version != 1 {
		// Unreadable: replays are refused again once this host has seen
		// each node's current entry.
		a.logger.Error("ignoring unreadable serials file", "path", a.opts.SerialsPath, "err", err, "version", f.Version)
		return
	}
	a.planner.SetSerials(f.Serials)
}

// saveSerials writes the planner's serials when they grew, at most once
// per serialsInterval (force: now, as when stopping). It returns when it
// wants to be called again, or zero.
func (a *Agent) saveSerials(now time.Time, force bool) time.Time {
	if a.opts.SerialsPath == "" {
		return time.Time{}
	}
	if !force && now.Before(a.serials.next) {
		return a.serials.next
	}
	s, changed := a.planner.Serials()
	if !changed && !a.serials.dirty {
		return time.Time{}
	}
	a.serials.next = now.Add(serialsInterval)
	b, err := json.Marshal(serialsFile{Version: 1, Serials: s})
	if err == nil {
		err = atomicfile.WriteFile(a.opts.SerialsPath, b, 0o600)
	}
	a.serials.dirty = err != nil
	if err != nil {
		a.logger.Error("save serials", "err", err)
		return a.serials.next
	}
	return time.Time{}
}
