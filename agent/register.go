package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/catalogsync"
	"meshd.dev/meshd/netlinkx"
	"meshd.dev/meshd/peers"
)

// registrar is the state of this node's own catalog entry.
type registrar struct {
	last time.Time // the last registration attempt
	at   time.Time // when the last registration (or key rotation) was written
	// backoff is the wait before registering again while the catalog
	// disagrees (see ensureRegistered).
	backoff time.Duration
	count   uint64 // catalog writes made
	// foreign are other service IDs whose entries name this node, and
	// rewritten counts the reconciles that saw an instance of this node's
	// ID saying what this host did not publish (its own rewritten, or one
	// on another Consul node): someone wrote them (a buggy or hostile
	// host); status reports both.
	foreign   []string
	rewritten uint64
	// matched is the last entry of this node's ID found to say what the
	// registration does (see matchesOwn).
	matched ownMatch
}

// ownMatch is an entry of this node's ID, by its ModifyIndex, that matched
// the registration under a serial and key.
type ownMatch struct {
	modify, serial uint64
	key            wgtypes.Key
}

// rotation is the state of the last key rotation.
type rotation struct {
	at time.Time // when the key last changed
	// kickAt is when to reset the sessions that have not handshaken since
	// (kickStalePeers), or zero.
	kickAt time.Time
}

// A registration goes through the local agent, which syncs it to the
// servers a moment later: a catalog read sent before that (registerSettle)
// may lack it, and is not taken as the entry being gone, unless no newer
// read has come for registerPatience.
const (
	registerSettle   = 2 * time.Second
	registerPatience = 10 * time.Second
)

// ensureRegistered registers at start, and again when the catalog lacks
// this node's entry or shows a different one (the local agent lost its
// state, someone deregistered or rewrote it through the catalog, or
// meshd's identity changed). Consul's ACLs cannot stop another host's token
// from doing that (see README, "Consul ACLs"), so it is put back at once;
// while the catalog keeps disagreeing, the waits between attempts double
// from 1 to 10 seconds. It returns when to look again, or zero.
//
// changed, when not nil, are the only service IDs whose entries changed
// since the last call (the catalog's delta): this node's own entry is
// looked up, and only the changed ones are looked at for another ID
// claiming this node; nil looks at every entry.
func (a *Agent) ensureRegistered(ctx context.Context, snap *catalogsync.Snapshot, changed []string, now time.Time) (again time.Time) {
	var shown *peers.Entry // an entry of this node's ID that this host did not publish
	if snap != nil {
		matched := false
		reg := &a.opts.Registration
		for i := idRange(snap.Entries, reg.ID()); i < len(snap.Entries) && snap.Entries[i].ServiceID == reg.ID(); i++ {
			// The same entry signed before a restart, under its serial,
			// is this host's own: adopted, a restart writes nothing.
			if e := snap.Entries[i]; !matched && (a.matchesOwn(e) || reg.Adopt(e)) {
				matched = true
				continue
			}
			shown = &snap.Entries[i]
		}
		claims := func(e peers.Entry) bool { return e.ServiceID != reg.ID() && e.Meta[peers.MetaNode] == reg.Node }
		if changed == nil {
			a.reg.foreign = a.reg.foreign[:0]
			for _, e := range snap.Entries {
				if claims(e) {
					a.reg.foreign = append(a.reg.foreign, e.ServiceID)
				}
			}
		} else {
			for _, id := range changed {
				a.reg.foreign = slices.DeleteFunc(a.reg.foreign, func(f string) bool { return f == id })
				for i := idRange(snap.Entries, id); i < len(snap.Entries) && snap.Entries[i].ServiceID == id; i++ {
					if claims(snap.Entries[i]) {
						j, _ := slices.BinarySearch(a.reg.foreign, id)
						a.reg.foreign = slices.Insert(a.reg.foreign, j, id)
					}
				}
			}
		}
		if matched {
			a.reg.backoff = 0
			return time.Time{}
		}
	}
	if a.reg.count > 0 {
		// Registered, and no view of the catalog yet (a first read of a
		// large catalog takes seconds), or one read before the
		// registration could show in it: nothing says the entry is
		// missing, and registering it again would take it out and put it
		// back, newest of all, for the whole fleet to see twice.
		if snap == nil {
			return time.Time{}
		}
		if wait := a.reg.at.Add(registerPatience); !snap.ReadAt.After(a.reg.at.Add(registerSettle)) && now.Before(wait) {
			return wait
		}
	}
	if shown != nil {
		a.reg.rewritten++
	}
	if next := a.reg.last.Add(a.reg.backoff); !a.reg.last.IsZero() && now.Before(next) {
		return next
	}
	a.reg.last = now
	a.reg.backoff = min(max(2*a.reg.backoff, time.Second), 10*time.Second)
	again = now.Add(a.reg.backoff)
	if a.reg.count > 0 {
		var index uint64
		if snap != nil {
			index = snap.Index
		}
		if shown == nil {
			a.logger.Warn("the catalog lacks this node's entry; registering it again", "service_id", a.opts.Registration.ID(), "catalog_index", index)
		} else {
			a.logger.Warn("the catalog shows another entry for this node; registering it again", "service_id", a.opts.Registration.ID(),
				"catalog_index", index, "catalog_meta", shown.Meta, "catalog_tags", shown.Tags)
		}
	}
	if err := a.opts.Catalog.Publish(ctx, a.opts.Registration, a.reg.count > 0); err != nil {
		a.logger.Warn("register failed; will retry", "err", err)
		return again
	}
	a.reg.count++
	a.reg.at = time.Now()
	a.logger.Info("registered", "service_id", a.opts.Registration.ID(), "meta", a.opts.Registration.Meta())
	return again
}

// RotateKey switches the node to a new private key: it configures the
// device with it and publishes the new public key back to back, and
// returns once both are done.
//
// The device goes first: a peer that learns the new key starts a handshake
// with it at once, and a handshake the device could not answer yet would
// only be retried after WireGuard's 5 s rekey timeout.
func (a *Agent) RotateKey(ctx context.Context, key wgtypes.Key) error {
	var err error
	if derr := a.loop.Do(ctx, func(ctx context.Context) error {
		a.planner.Forget()
		err = a.doRotate(ctx, key)
		return nil
	}); derr != nil {
		return derr
	}
	return err
}

func (a *Agent) doRotate(ctx context.Context, key wgtypes.Key) error {
	oldPub, oldPriv := a.opts.Registration.PublicKey, a.opts.Link.PrivateKey()
	a.opts.Link.SetPrivateKey(key)
	if err := a.opts.Link.Ensure(); err != nil {
		a.opts.Link.SetPrivateKey(oldPriv)
		return errors.Join(fmt.Errorf("apply the new key: %w", err), a.opts.Link.Ensure())
	}
	oldSerial := a.opts.Registration.Serial
	a.opts.Registration.PublicKey = key.PublicKey()
	a.opts.Registration.Serial = catalogsync.NewSerial(oldSerial)
	if err := a.opts.Catalog.Publish(ctx, a.opts.Registration, false); err != nil {
		// The catalog still announces the old key: go back to it.
		a.opts.Registration.PublicKey, a.opts.Registration.Serial = oldPub, oldSerial
		a.opts.Link.SetPrivateKey(oldPriv)
		return errors.Join(fmt.Errorf("publish the new key: %w", err), a.opts.Link.Ensure())
	}
	// The watch shows the old entry until the catalog has the new one:
	// that is not a reason to register again (see ensureRegistered).
	a.reg.last, a.reg.backoff = time.Now(), time.Second
	a.reg.at = a.reg.last
	a.reg.count++
	a.rot.at = time.Now()
	a.logger.Info("rotated key", "old_public_key", oldPub, "public_key", key.PublicKey())
	a.loop.Mark()
	// Peers learn the new key within a catalog propagation; by then, each
	// should have handshaken with the new key. Check once, after a second.
	a.rot.kickAt = a.rot.at.Add(time.Second)
	return nil
}

// kickStalePeers resets the sessions of desired peers that have not
// handshaken since the key rotation: their handshake most likely collided
// with ours (both sides initiated at once), and WireGuard would retry only
// after its 5 s rekey timeout. A reset makes this side start a fresh
// handshake now, which the peer, holding the new key by then, answers.
func (a *Agent) kickStalePeers() {
	dev, err := netlinkx.ReadDevice(a.opts.Link.Name())
	if err != nil {
		return
	}
	stale := map[wgtypes.Key]bool{}
	for _, p := range dev.Peers {
		if p.LastHandshake.Before(a.rot.at) {
			stale[p.PublicKey] = true
		}
	}
	var reset []peers.Peer
	for _, p := range a.planner.Desired() {
		if stale[p.PublicKey] {
			reset = append(reset, p)
		}
	}
	if err := a.opts.Link.ResetPeers(reset); err != nil {
		a.logger.Warn("reset stale sessions after key rotation", "err", err)
	}
}

// matchesOwn is Registration.Matches, remembered: an entry with the
// ModifyIndex of the one that matched last is the same entry (the catalog
// changes the index with every write to it), and it matches again while
// the registration's serial and key are those it matched (nothing else of
// a registration changes while meshd runs). Matching signs the entry, an
// ed25519 signature at every reconcile otherwise.
func (a *Agent) matchesOwn(e peers.Entry) bool {
	reg := &a.opts.Registration
	m := ownMatch{modify: e.ModifyIndex, serial: reg.Serial, key: reg.PublicKey}
	if e.ModifyIndex != 0 && a.reg.matched == m {
		return true
	}
	if !reg.Matches(e) {
		return false
	}
	if e.ModifyIndex != 0 {
		a.reg.matched = m
	}
	return true
}

// idRange is the index of the first entry of service ID id in entries
// (sorted by service ID), or where it would be.
func idRange(entries []peers.Entry, id string) int {
	i, _ := slices.BinarySearchFunc(entries, id, func(e peers.Entry, id string) int { return strings.Compare(e.ServiceID, id) })
	return i
}
