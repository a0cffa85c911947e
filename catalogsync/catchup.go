package catalogsync

import (
	"cmp"
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"meshd.dev/meshd/peers"
)

// catchUpMargin is how long before the last list read a change may be
// dated and still be read by the catch-up that answers a gap (a change's
// date is its serial: its signer's clock). A signer whose clock is further
// behind this host's has its change come with the whole list, read right
// after.
const catchUpMargin = 30 * time.Second

// catchUpSettle is how long after a catch-up that changed the view the
// whole list is read: the list's read (the agent serializes every entry)
// would otherwise take the CPU the catch-up's changes are applied with.
const catchUpSettle = 2 * time.Second

// catchUp answers hints missed that the ring could not give back, before
// the whole list is read: one read of the instances signed since the last
// list was read (less catchUpMargin), through a filter the servers apply,
// so that it costs the agent and the servers what changed, not the fleet.
// What it finds newer than the view is put over the list as a hint's read
// is (it never removes anything); it returns the service IDs whose view
// changed, sorted. Unsigned changes, and those dated further back, come
// with the whole list.
//
// Catch-ups are spaced as the reads of the whole list a gap asks for are
// (Watcher.ReadNowEvery): a writer that floods the hint key with skipped
// numbers costs every host at most one of each per 5 s.
func (c *Catalog) catchUp(ctx context.Context, own string) []string {
	c.mu.Lock()
	var since time.Time
	if c.list != nil {
		since = c.list.ReadAt
	}
	now := time.Now()
	spaced := now.Sub(c.lastCatchUp) >= cmp.Or(c.watcher.ReadNowEvery, 5*time.Second)
	if spaced && !since.IsZero() {
		c.lastCatchUp = now
	}
	c.mu.Unlock()
	if !spaced {
		return nil
	}
	floor := since.Add(-catchUpMargin).UnixNano()
	if since.IsZero() || floor <= 0 {
		return nil // no list read yet: the whole list comes next
	}
	q := (&api.QueryOptions{AllowStale: true, Datacenter: c.Datacenter, Filter: SignedSince(uint64(floor))}).WithContext(ctx)
	start := time.Now()
	found, meta, err := c.Client.Health().Service(c.Service, "", false, q)
	if err != nil {
		c.Logger.Info("catch-up read failed; the whole list brings the changes", "err", err)
		return nil
	}
	entries := Convert(found)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.catchUps++
	if c.list == nil || meta.LastIndex <= c.list.Index {
		return nil
	}
	var changed []string
	for i := 0; i < len(entries); {
		e := entries[i]
		i++
		if i < len(entries) && entries[i].ServiceID == e.ServiceID {
			// One ID on several nodes: the whole list judges it.
			for i < len(entries) && entries[i].ServiceID == e.ServiceID {
				i++
			}
			continue
		}
		if e.ServiceID == own || !c.newer(e) {
			continue
		}
		c.hinted[e.ServiceID] = Hinted{Entry: &e, Index: meta.LastIndex}
		changed = append(changed, e.ServiceID)
	}
	c.Logger.Debug("caught up", "since", time.Unix(0, floor), "read", len(entries), "changed", len(changed), "index", meta.LastIndex, "took", time.Since(start))
	return changed
}

// newer reports whether e is newer than what the view holds for its
// service ID (the list's entry, or a hint's read over it), or the view
// has none. An ID the list holds more than once is left to the list.
// c.mu must be held.
func (c *Catalog) newer(e peers.Entry) bool {
	i, j := idRange(c.list.Entries, e.ServiceID)
	switch {
	case j-i > 1:
		return false
	case j-i == 1 && c.list.Entries[i].ModifyIndex >= e.ModifyIndex:
		return false
	}
	if h, ok := c.hinted[e.ServiceID]; ok && !h.Carried && h.Entry != nil && h.Entry.ModifyIndex >= e.ModifyIndex {
		return false
	}
	return true
}

// SignedSince is a filter expression (Consul's) for the instances whose
// signed serial is at least floor. Meta values are strings, and filters
// compare strings only whole or by a regular expression: the expression
// is the regular expression of the decimal numbers of at least floor.
func SignedSince(floor uint64) string {
	return fmt.Sprintf(`%q in Service.Meta and Service.Meta.%s matches %q`, peers.MetaSerial, peers.MetaSerial, atLeast(floor))
}

// atLeast is a regular expression matching exactly the decimal numbers
// (without leading zeros, as strconv writes them) of at least n: n
// itself, those as long whose first digit that differs is greater, and
// the longer ones.
func atLeast(n uint64) string {
	s := strconv.FormatUint(n, 10)
	alts := []string{s}
	for i := range len(s) {
		if s[i] == '9' {
			continue
		}
		alt := s[:i] + "[" + string(s[i]+1) + "-9]"
		if rest := len(s) - 1 - i; rest > 0 {
			alt += "[0-9]{" + strconv.Itoa(rest) + "}"
		}
		alts = append(alts, alt)
	}
	alts = append(alts, "[1-9][0-9]{"+strconv.Itoa(len(s))+",}")
	return "^(" + strings.Join(alts, "|") + ")$"
}
