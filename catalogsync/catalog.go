package catalogsync

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"golang.org/x/time/rate"

	"meshd.dev/meshd/health"
	"meshd.dev/meshd/peers"
)

// hintReadWait bounds how long a hint's read waits for a lagging server to
// reach the hint's index.
const hintReadWait = 2 * time.Second

// Catalog is one node's whole use of Consul for the mesh: it watches the
// service (the whole list, with hints merged in: Watch delivers snapshots
// and nobody above it sees a hint), publishes and withdraws the node's
// entry (writing the hint that announces each change), and puts the
// node's health summary. The agent reaches Consul only through it.
//
// Set the exported fields, then call Watch once; the other methods may be
// called from any goroutine.
type Catalog struct {
	Client *api.Client
	// HTTP, when set, reads the list watch's responses (see HTTP).
	HTTP       *HTTP
	Service    string
	Datacenter string
	// HintKey is the KV key that announces a changed entry (see Hint):
	// written after this node's own changes reach the catalog, and
	// followed so that another node's change is read alone instead of
	// waiting for the whole list. Empty turns hints off.
	HintKey string
	// FullReadInterval, with hints on, spaces the reads of the whole list
	// (Watcher.ReadEvery): changes come as hints, the list is read about
	// once per interval, and at once when hints were missed. Zero, or hints
	// off, reads the list on every change (spaced by Limiter).
	FullReadInterval time.Duration
	// Limiter, when set, spaces the list watch's wakes (Watcher.Limiter).
	Limiter *rate.Limiter
	// MaxStale, when set, refuses a list from a server that last heard
	// from its leader longer ago (Watcher.MaxStale).
	MaxStale time.Duration
	Logger   *slog.Logger

	once        sync.Once
	watcher     *Watcher // the whole list
	hintWatcher *Watcher
	// announcing counts hint writers in flight; Watch waits for them.
	announcing sync.WaitGroup

	mu   sync.Mutex // guards the fields below
	list *Snapshot  // the last list the watch read
	// revocations are the values under RevocationsPrefix, last read.
	revocations [][]byte
	// hinted holds the instances hints made this node read, until the list
	// is at least as new (Overlay, Prune).
	hinted                         map[string]Hinted
	hints, hintReads, hintsApplied uint64
	hintsCarried                   uint64                 // hints whose entry came in the hint (takeCarried)
	gaps                           uint64                 // hints missed (RunHints' lost)
	catchUps                       uint64                 // reads of what was signed since the list (catchUp)
	lastCatchUp                    time.Time              // when the last one was sent
	consulNode                     string                 // the local agent's node, once known
	send                           func(changed []string) // delivers the view, while Watch runs
	// newest holds, by service ID, the newest version of each instance a
	// list showed and when it was first seen: a list from a lagging server
	// (its index went backwards) does not bring back an older version of
	// an instance (a rotated-out key). olderKept counts the versions it
	// kept so.
	newest    map[string]seenEntry
	olderKept uint64
	deliverMu sync.Mutex
}

func (c *Catalog) init() {
	c.once.Do(func() {
		if c.Logger == nil {
			c.Logger = slog.New(slog.DiscardHandler)
		}
		c.watcher = &Watcher{Client: c.Client, HTTP: c.HTTP, Service: c.Service, Datacenter: c.Datacenter,
			Logger: c.Logger, Limiter: c.Limiter, MaxStale: c.MaxStale}
		c.hintWatcher = &Watcher{Client: c.Client, Datacenter: c.Datacenter, Logger: c.Logger}
		if c.HintKey != "" {
			c.watcher.ReadEvery = c.FullReadInterval
		}
		c.hinted = map[string]Hinted{}
	})
}

// Watch watches the service until ctx is done, calling deliver with every
// new view of it: the last list read with the instances hints made it read
// put over it (Overlay). own is this node's service ID: hints naming it
// are not followed. deliver is never called concurrently. Watch returns
// once every goroutine it started, hint writers included, has ended.
func (c *Catalog) Watch(ctx context.Context, own string, deliver func(Snapshot)) {
	c.init()
	// delivered is the list under the last snapshot delivered: a snapshot
	// over the same list differs from it only where hints were read since.
	var delivered *Snapshot
	// send delivers the view; changed, when not nil, are the only service
	// IDs whose entries may differ from the last delivery's (a hint's read,
	// a revocation: none).
	send := func(changed []string) {
		c.deliverMu.Lock()
		defer c.deliverMu.Unlock()
		c.mu.Lock()
		var out Snapshot
		switch {
		case c.list == nil:
			c.mu.Unlock()
			return
		case changed != nil && delivered == c.list:
			// Over the same list: only the changed IDs' entries, not a copy
			// of thousands.
			out = Snapshot{Index: c.list.Index, ReadAt: c.list.ReadAt, Delta: true, Changed: changed, Entries: OverlayIDs(c.list, c.hinted, changed)}
		default:
			out = *Overlay(c.list, c.hinted)
			if len(out.Entries) > 0 && &out.Entries[0] == &c.list.Entries[0] {
				out.Entries = slices.Clone(out.Entries) // the receiver may change it
			}
		}
		out.Revocations = c.revocations
		delivered = c.list
		c.mu.Unlock()
		deliver(out)
	}
	c.mu.Lock()
	c.send = send
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.send = nil
		c.mu.Unlock()
	}()
	var wg sync.WaitGroup
	wg.Go(func() {
		c.watcher.Run(ctx, func(s Snapshot) {
			c.mu.Lock()
			if kept := c.keepNewest(&s); kept > 0 {
				c.Logger.Warn("the catalog answered with older versions of instances; keeping the newer ones", "instances", kept, "index", s.Index)
			}
			c.list = &s
			Prune(c.hinted, s.Index, s.ReadAt, c.window())
			c.mu.Unlock()
			send(nil)
		})
	})
	wg.Go(func() {
		rw := &Watcher{Client: c.Client, Datacenter: c.Datacenter, Logger: c.Logger}
		rw.RunRevocations(ctx, func(values [][]byte) {
			c.mu.Lock()
			same := slices.EqualFunc(values, c.revocations, bytes.Equal)
			c.revocations = values
			c.mu.Unlock()
			if !same { // the first read of an empty folder changes nothing
				send([]string{})
			}
		})
	})
	if c.HintKey != "" {
		wg.Go(func() {
			c.hintWatcher.RunHints(ctx, c.HintKey, func(hs []Hint) {
				if changed := c.readHints(ctx, own, hs); len(changed) > 0 {
					send(changed)
				}
			}, func(why string, skipped bool) {
				c.count(why)
				if !skipped {
					// No hint there: nothing dates what may be missing.
					c.watcher.ReadNow()
					return
				}
				// What was signed since the last list first, then the
				// whole list, the authority, once that is applied.
				if changed := c.catchUp(ctx, own); len(changed) > 0 {
					send(changed)
					time.AfterFunc(catchUpSettle, c.watcher.ReadNow)
					return
				}
				c.watcher.ReadNow()
			})

		})
	}
	wg.Wait()
	c.announcing.Wait()
}

// seenEntry is an instance's version and when a list first showed it.
type seenEntry struct {
	peers.Entry
	at time.Time
}

// keepNewest puts in s, for every instance an earlier list showed in a
// newer version (same CreateIndex, higher ModifyIndex) first seen within
// keepWindow, that version with s's health, and remembers s's versions
// otherwise. It returns how many it kept. c.mu must be held.
//
// The window: an answer that passed MaxStale is at most that far behind
// the leader, so a version superseded longer ago cannot come back from a
// lagging server; an older ModifyIndex seen after it is a restored
// snapshot of the servers (their indexes went back for good) and is
// believed.
func (c *Catalog) keepNewest(s *Snapshot) int {
	now := time.Now()
	window := c.window()
	next := make(map[string]seenEntry, len(s.Entries))
	kept := 0
	for i, e := range s.Entries {
		prev, ok := c.newest[e.ServiceID]
		switch {
		case ok && prev.CreateIndex == e.CreateIndex && e.ModifyIndex < prev.ModifyIndex && now.Sub(prev.at) < window:
			if kept == 0 {
				s.Entries = slices.Clone(s.Entries) // the watch keeps its own to compare
			}
			prev.Health = e.Health
			s.Entries[i] = prev.Entry
			kept++
			next[e.ServiceID] = prev
		case ok && prev.ModifyIndex == e.ModifyIndex && prev.CreateIndex == e.CreateIndex:
			next[e.ServiceID] = seenEntry{e, prev.at}
		default:
			next[e.ServiceID] = seenEntry{e, now}
		}
	}
	c.newest = next
	c.olderKept += uint64(kept)
	return kept
}

// window is how far behind its leader a server answering a list may be:
// twice MaxStale, at least a minute.
func (c *Catalog) window() time.Duration { return max(2*c.MaxStale, time.Minute) }

// hintReaders bounds the instance reads of one batch of hints (a wake
// that skipped many, read back from the ring) made at once.
const hintReaders = 8

// readHints reads the instances a batch of hints names (for each service
// ID but own, as its last hint says), up to hintReaders at once, and
// returns the service IDs whose view changed, sorted.
func (c *Catalog) readHints(ctx context.Context, own string, hs []Hint) []string {
	last := make(map[string]Hint, len(hs))
	n := 0
	for _, h := range hs {
		if h.ServiceID != own {
			if _, twice := last[h.ServiceID]; twice {
				// Which of two carried versions is the catalog's now is
				// the catalog's to say (a writer may carry an older one
				// after the newer): read it.
				h.Carried = nil
			}
			last[h.ServiceID] = h
			n++
		}
	}
	ids := slices.Sorted(maps.Keys(last))
	if n > len(ids) {
		c.mu.Lock()
		c.hints += uint64(n - len(ids)) // the earlier hints of an ID, read as its last
		c.mu.Unlock()
	}
	if len(ids) == 1 {
		if c.readHint(ctx, last[ids[0]]) {
			return ids
		}
		return nil
	}
	changed := make([]bool, len(ids))
	sem := make(chan struct{}, hintReaders)
	var wg sync.WaitGroup
	for i, id := range ids {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			changed[i] = c.readHint(ctx, last[id])
		})
	}
	wg.Wait()
	var out []string
	for i, id := range ids {
		if changed[i] {
			out = append(out, id)
		}
	}
	return out
}

// readHint reads the instance a hint names, unless the list already has
// the change, and keeps what it read until the list catches up. It reports
// whether the view changed. A read that fails makes the list be read
// (missed).
func (c *Catalog) readHint(ctx context.Context, h Hint) bool {
	if h.Carried != nil && h.Written != 0 {
		// The hint's own index is the writer's word; Consul's index for
		// the hint's write is above any honest one (the writer saw the
		// change before it wrote), so the lower of the two dates the
		// carried entry: a hint cannot keep it over the list for longer.
		h.Index = min(h.Index, h.Written)
	}
	c.mu.Lock()
	c.hints++
	known := c.list != nil && h.Index <= c.list.Index
	if hd, ok := c.hinted[h.ServiceID]; ok && !hd.Carried && h.Index <= hd.Index {
		known = true // read since (a catch-up's read, or a later hint's)
	}
	c.mu.Unlock()
	if known {
		return false // the list already has the change
	}
	if h.Carried != nil && h.Written != 0 {
		return c.takeCarried(h)
	}
	// A server answering stale reads may lag the one the writer read:
	// wait (briefly) until it has the hint's index.
	q := &api.QueryOptions{Datacenter: c.Datacenter, WaitIndex: h.Index - 1, WaitTime: hintReadWait}
	start := time.Now()
	e, index, err := ReadInstance(ctx, c.Client, c.Service, h, q)
	if err != nil {
		// The change is not lost: the list read it asks for brings it.
		c.missed(fmt.Sprintf("hint %d not read: %v", h.Seq, err))
		return false
	}
	c.Logger.Debug("hint read", "service_id", h.ServiceID, "index", index, "found", e != nil, "took", time.Since(start))
	c.mu.Lock()
	defer c.mu.Unlock()
	c.hintReads++
	if c.list != nil && index <= c.list.Index {
		return false
	}
	hd := Hinted{Entry: e, Index: index}
	if e == nil {
		hd.Withdrawal = h.Withdrawal
	}
	c.hinted[h.ServiceID] = hd
	c.hintsApplied++
	return true
}

// takeCarried keeps the entry h carries, as readHint keeps an instance it
// read, and reports whether the view changed. h.Index is already no
// higher than h.Written.
//
// Nothing the entry's signatures do not cover comes from the hint: its
// ModifyIndex is the hint's write (a Consul index no catalog write has, so
// the entry is parsed and verified as a new version and no parse of
// another version is taken for it), and its CreateIndex is that of the
// instance of the same ID the list has, else again the hint's write
// (younger than every instance the list has: it loses every conflict over
// a node name, key or prefix to them). Health comes from the list
// (Overlay).
func (c *Catalog) takeCarried(h Hint) bool {
	e := &peers.Entry{ServiceID: h.ServiceID, Meta: h.Carried.Meta, Tags: h.Carried.Tags, CreateIndex: h.Written, ModifyIndex: h.Written}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.list != nil && h.Index <= c.list.Index {
		return false // the list caught up meanwhile
	}
	if c.list != nil {
		if i, j := idRange(c.list.Entries, h.ServiceID); i < j {
			e.CreateIndex = c.list.Entries[i].CreateIndex
		}
	}
	c.hinted[h.ServiceID] = Hinted{Entry: e, Index: h.Index, Carried: true, Taken: time.Now()}
	c.hintsCarried++
	c.hintsApplied++
	return true
}

// missed answers a hint not read with a read of the whole list.
func (c *Catalog) missed(why string) {
	c.count(why)
	c.watcher.ReadNow()
}

// count counts and logs hints missed.
func (c *Catalog) count(why string) {
	c.mu.Lock()
	c.gaps++
	c.mu.Unlock()
	c.Logger.Info("hints missed; reading the whole list", "why", why)
}

// State is the list watch's state with the hint counters. With hints on,
// the hint watch is the live link to the catalog (the list is read only
// now and then): the catalog is reachable when both last succeeded, and
// its last good read is the later of the two.
func (c *Catalog) State() State {
	c.init()
	st := c.watcher.State()
	c.mu.Lock()
	st.Hints, st.HintReads, st.HintsCarried, st.HintsApplied, st.OlderKept = c.hints, c.hintReads, c.hintsCarried, c.hintsApplied, c.olderKept
	hs := c.hintWatcher.State()
	st.Gaps, st.RingReads, st.CatchUps = c.gaps, hs.RingReads, c.catchUps
	c.mu.Unlock()
	if c.HintKey != "" {
		if hs.LastError != "" && !hs.Reachable {
			st.Reachable, st.LastError = false, hs.LastError
		}
		if hs.LastGoodRead.After(st.LastGoodRead) {
			st.LastGoodRead = hs.LastGoodRead
		}
	}
	return st
}

// Publish registers reg on the local agent and, with hints on, announces
// it once the catalog shows it (in the background; Watch waits for it).
// again says the agent registered it before and the catalog lost or
// changed it: the local agent believes the catalog is in step, so
// registering the same definition would not make it sync until its
// anti-entropy (a minute or more); removing and adding it makes it sync
// now.
func (c *Catalog) Publish(ctx context.Context, reg Registration, again bool) error {
	c.init()
	if again {
		if err := Deregister(ctx, c.Client, reg.Node); err != nil {
			c.Logger.Warn("deregister before re-registering failed", "err", err)
		}
	}
	if err := Register(ctx, c.Client, reg); err != nil {
		return err
	}
	if c.HintKey != "" {
		c.announcing.Go(func() {
			c.announce(ctx, reg, func(e *peers.Entry) bool { return e != nil && reg.Matches(*e) }, nil)
		})
	}
	return nil
}

// Wait waits for the hint writers Publish started (Watch does too): a
// command that publishes and exits calls it before exiting.
func (c *Catalog) Wait() { c.announcing.Wait() }

// Withdraw takes reg's entry out of the catalog for good (see the package
// function Withdraw), announcing it with this catalog's hint key.
func (c *Catalog) Withdraw(ctx context.Context, reg Registration) error {
	c.init()
	err := Deregister(ctx, c.Client, reg.Node)
	if err == nil {
		c.Logger.Info("deregistered", "service_id", reg.ID())
		if c.HintKey != "" {
			c.announce(ctx, reg, func(e *peers.Entry) bool { return e == nil }, reg.Withdrawal())
		}
	}
	key := health.SummaryPrefix + reg.Node
	if _, derr := c.Client.KV().Delete(key, (&api.WriteOptions{}).WithContext(ctx)); derr != nil {
		c.Logger.Warn("health summary not deleted", "key", key, "err", derr)
	}
	return err
}

// announce writes the hint for reg once the catalog shows it as shown
// says. Failures are logged: the watch brings every change without hints.
func (c *Catalog) announce(ctx context.Context, reg Registration, shown func(*peers.Entry) bool, w *peers.Withdrawal) {
	node, err := c.localNode()
	if err != nil {
		c.Logger.Warn("no hint written: the local agent's node name is unknown", "err", err)
		return
	}
	var seen *peers.Entry
	h, err := Announce(ctx, c.Client, c.HintKey, node, reg, func(e *peers.Entry) bool {
		if shown(e) {
			seen = e
			return true
		}
		return false
	}, w)
	if seen != nil && h.Index != 0 {
		// This node's own change, as the catalog showed it: into the view
		// now, as a hint's read would be (the node skips its own hints),
		// since the whole list may not be read again for a while.
		c.mu.Lock()
		if c.list == nil || h.Index > c.list.Index {
			c.hinted[reg.ID()] = Hinted{Entry: seen, Index: h.Index}
		}
		send := c.send
		c.mu.Unlock()
		if send != nil {
			send([]string{reg.ID()})
		}
	}
	switch {
	case errors.Is(err, context.Canceled):
		// the agent stops
	case err != nil:
		c.Logger.Warn("no hint written", "err", err)
	default:
		c.Logger.Debug("hint written", "key", c.HintKey, "service_id", h.ServiceID, "index", h.Index)
	}
}

// localNode is the local agent's node name (asked once).
func (c *Catalog) localNode() (string, error) {
	c.mu.Lock()
	node := c.consulNode
	c.mu.Unlock()
	if node != "" {
		return node, nil
	}
	node, err := c.Client.Agent().NodeName()
	if err != nil {
		return "", err
	}
	c.mu.Lock()
	c.consulNode = node
	c.mu.Unlock()
	return node, nil
}

// PutSummary writes s as the node's health summary.
func (c *Catalog) PutSummary(ctx context.Context, s health.Summary) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	key := health.SummaryPrefix + s.Node
	if _, err := c.Client.KV().Put(&api.KVPair{Key: key, Value: b}, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	return nil
}

// Fleet reads what `meshd mesh` shows (stale reads allowed): every
// instance of service, and the health summaries by node. A summary counts
// for the node its KV key names (only that node's token may write the key),
// and only if the summary says the same node: one host cannot publish
// another's row.
func Fleet(ctx context.Context, c *api.Client, service string) ([]peers.Entry, map[string]health.Summary, error) {
	q := (&api.QueryOptions{AllowStale: true}).WithContext(ctx)
	entries, _, err := c.Health().Service(service, "", false, q)
	if err != nil {
		return nil, nil, fmt.Errorf("read the %s service: %w", service, err)
	}
	pairs, _, err := c.KV().List(health.SummaryPrefix, q)
	if err != nil {
		return nil, nil, fmt.Errorf("read health summaries: %w", err)
	}
	summaries := map[string]health.Summary{}
	for _, p := range pairs {
		node := strings.TrimPrefix(p.Key, health.SummaryPrefix)
		var s health.Summary
		if json.Unmarshal(p.Value, &s) == nil && s.Node == node {
			summaries[node] = s
		}
	}
	return Convert(entries), summaries, nil
}
