package peers

import (
	"cmp"
	"slices"
	"strings"
)

// maxPatch is the most changed entries patch takes on in a list of up to
// 8 times as many; past it, a full pass costs about the same. A larger
// list takes an eighth of its length (a host that missed a few hundred
// changes in a fleet of 25,000 patches them).
const maxPatch = 256

// patchLimit is the most changed entries patch takes on in a list of n.
func patchLimit(n int) int { return max(maxPatch, n/8) }

// change is one entry that changed between two catalog reads: old nil
// for an added entry, new nil for a removed one.
type change struct{ old, new *Entry }

// changedEntries compares two lists of entries sorted by service ID: an
// entry changed when it was added or removed, or has another ModifyIndex,
// CreateIndex or health. ok is false when entries is not strictly sorted or
// more than patchLimit changed.
func changedEntries(last, entries []Entry) (changes []change, ok bool) {
	if sameSlice(last, entries) {
		return nil, true // planned again, as a deadline asks: nothing changed
	}
	limit := patchLimit(len(entries))
	for i, j := 0, 0; i < len(last) || j < len(entries); {
		if j > 0 && j < len(entries) && entries[j-1].ServiceID >= entries[j].ServiceID {
			return nil, false // not strictly sorted
		}
		switch {
		case j == len(entries) || i < len(last) && last[i].ServiceID < entries[j].ServiceID:
			changes = append(changes, change{old: &last[i]})
			i++
		case i == len(last) || entries[j].ServiceID < last[i].ServiceID:
			changes = append(changes, change{new: &entries[j]})
			j++
		default:
			a, b := &last[i], &entries[j]
			if a.ModifyIndex == 0 || a.ModifyIndex != b.ModifyIndex || a.CreateIndex != b.CreateIndex || a.Health != b.Health {
				changes = append(changes, change{a, b})
			}
			i++
			j++
		}
		if len(changes) > limit {
			return nil, false
		}
	}
	return changes, true
}

// patch computes Desire from the last result when only a few entries
// changed (by service ID: added, removed, or with another ModifyIndex,
// CreateIndex or health), so that a change in a catalog of thousands costs
// what the change touches. It applies only where the order of entries
// cannot matter: the last result had no conflict between entries, and no
// changed entry conflicts with an accepted peer (else ok is false and
// Desire makes its full pass). Then every entry's verdict depends on that
// entry alone, and removing or adding one changes no other's.
func (c *ParseCache) patch(entries []Entry, self Self, r Rules) (out []Peer, rej []Rejection, ok bool) {
	changes, ok := changedEntries(c.last, entries)
	if !ok {
		return nil, nil, false
	}
	if len(changes) == 0 {
		return c.lastOut, c.lastRej, true
	}
	out, rej, _, _, ok = c.patchChanges(changes, self, r, false)
	return out, rej, ok
}

// patchIDs is Desire for entries that differ from the last ones only in
// the entries of the service IDs in changed, which it looks up (binary
// search) instead of comparing the lists: patch's rules, with the last
// result's peers changed in place. withdrawn judges a changed entry's
// withdrawal (Planner.withdrawn1). gone and came are the peers the change
// took out of the desired set and put in (by node, as Changed returns
// them; gone sorted by node). ok is false when Desire must make its full
// pass: the result's peers are left as they were, and the next Desire
// makes it.
func (c *ParseCache) patchIDs(entries []Entry, changed []string, self Self, r Rules, withdrawn func(*Entry) bool) (out []Peer, rej []Rejection, gone, came []Peer, ok bool) {
	if c == nil || !c.patchable || self != c.lastSelf || r != c.lastRules || len(changed) > patchLimit(len(entries)) {
		return nil, nil, nil, nil, false
	}
	changes := make([]change, 0, len(changed))
	for _, id := range changed {
		var ch change
		if _, was := c.m[id]; was {
			ch.old = &Entry{ServiceID: id}
		}
		i, found := slices.BinarySearchFunc(entries, id, func(e Entry, id string) int { return strings.Compare(e.ServiceID, id) })
		if found {
			e := entries[i] // a copy: a refused withdrawal is taken off it
			if e.Withdrawal == nil || !withdrawn(&e) {
				ch.new = &e
			}
		}
		if ch.old != nil || ch.new != nil {
			changes = append(changes, ch)
		}
	}
	out, rej, gone, came, ok = c.patchChanges(changes, self, r, true)
	if !ok {
		c.patchable = false // its indexes are half changed: rebuild them
		return nil, nil, nil, nil, false
	}
	c.last, c.lastOut, c.lastRej = entries, out, rej
	return out, rej, gone, came, true
}

// patchChanges is patch for the changes given. In place, it changes the
// last result's peers where they are instead of copying them, and returns
// the peers gone and came.
func (c *ParseCache) patchChanges(changes []change, self Self, r Rules, inPlace bool) (out []Peer, rej []Rejection, gone, came []Peer, ok bool) {
	if len(changes) == 0 {
		return c.lastOut, c.lastRej, nil, nil, true
	}

	goneNodes := map[string]Peer{}
	goneIDs := map[string]bool{}
	for _, ch := range changes {
		if ch.old == nil {
			continue
		}
		// What was accepted for the ID (its parse, or the peer kept in
		// its place) leaves the indexes; its rejection leaves too.
		id := ch.old.ServiceID
		delete(c.m, id)
		if g, ok := c.good[id]; ok && c.byNode[g.Node] == id {
			delete(c.byNode, g.Node)
			delete(c.byKey, g.PublicKey)
			c.claims.remove(g.Prefix)
			goneNodes[g.Node] = g
		}
		goneIDs[id] = true
		if ch.new == nil {
			delete(c.good, id)
		}
	}
	var added []Peer
	var addedRej []Rejection
	for _, ch := range changes {
		if ch.new == nil {
			continue
		}
		p, err := c.parse(*ch.new, r, c.m)
		if err == nil && !slices.Contains(c.claims.lens, p.Prefix.Bits()) {
			return nil, nil, nil, nil, false // a prefix length the overlap index does not cover
		}
		d := decide(ch.new, p, err, self, c.byNode, c.byKey, c.claims, c.good, c.trust)
		if d.conflict {
			return nil, nil, nil, nil, false
		}
		if d.accept {
			c.byNode[d.peer.Node] = ch.new.ServiceID
			c.byKey[d.peer.PublicKey] = d.peer.Node
			c.claims.add(d.peer)
			c.trust.accepted(d.peer)
			c.good[ch.new.ServiceID] = d.peer
			added = append(added, d.peer)
		} else {
			delete(c.good, ch.new.ServiceID)
		}
		if d.rej != nil {
			addedRej = append(addedRej, *d.rej)
		}
	}

	slices.SortFunc(added, func(a, b Peer) int { return strings.Compare(a.Node, b.Node) })
	if inPlace {
		out, gone, came = c.lastOut, nil, nil
		byNode := func(p Peer, node string) int { return strings.Compare(p.Node, node) }
		// A node that stays (a new key, endpoint) is replaced where it is;
		// only one that comes or goes moves the peers after it.
		for node, g := range goneNodes {
			gone = append(gone, g)
			if _, stays := slices.BinarySearchFunc(added, node, byNode); stays {
				continue
			}
			if i, found := slices.BinarySearchFunc(out, node, byNode); found {
				out = slices.Delete(out, i, i+1)
			}
		}
		for _, p := range added {
			came = append(came, p)
			i, found := slices.BinarySearchFunc(out, p.Node, byNode)
			if _, stays := goneNodes[p.Node]; stays && found {
				out[i] = p
				continue
			}
			out = slices.Insert(out, i, p)
		}
		// As Changed: a node whose peer the kernel holds the same is
		// neither gone nor came.
		slices.SortFunc(gone, func(a, b Peer) int { return strings.Compare(a.Node, b.Node) })
		gone = slices.DeleteFunc(gone, func(g Peer) bool {
			i, found := slices.BinarySearchFunc(added, g.Node, byNode)
			return found && sameKernelPeer(g, added[i])
		})
		came = slices.DeleteFunc(came, func(p Peer) bool {
			g, found := goneNodes[p.Node]
			return found && sameKernelPeer(g, p)
		})
	} else {
		// One pass over the last peers: drop the gone, slot in the added
		// (no node is in both lists: an added peer's node was free).
		out = make([]Peer, 0, len(c.lastOut)+len(added))
		for _, p := range c.lastOut {
			for len(added) > 0 && added[0].Node < p.Node {
				out, added = append(out, added[0]), added[1:]
			}
			if _, g := goneNodes[p.Node]; !g {
				out = append(out, p)
			}
		}
		out = append(out, added...)
	}
	for _, x := range c.lastRej {
		if !goneIDs[x.ServiceID] {
			rej = append(rej, x)
		}
	}
	rej = append(rej, addedRej...)
	slices.SortFunc(rej, func(a, b Rejection) int { return cmp.Compare(a.ServiceID, b.ServiceID) })
	if len(out) == 0 && !inPlace {
		out = nil
	}
	return out, rej, gone, came, true
}

// sameSlice reports whether a and b are the same elements of the same
// array: a list the caller planned before, not changed since (callers
// never change a list they hand over).
func sameSlice[T any](a, b []T) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}
