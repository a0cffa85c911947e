package agent

import (
	"context"
	"errors"
	"time"

	"github.com/hashicorp/consul/api"

	"meshd.dev/meshd/catalogsync"
	"meshd.dev/meshd/peers"
)

// hintReadWait bounds how long a hint's read waits for a lagging server to
// reach the hint's index.
const hintReadWait = 2 * time.Second

// followHints reads every instance a hint names (but this node's own)
// that the list does not have yet, and puts what it reads in the desired
// state until the watch's list catches up (catalogsync.Overlay). A read
// that fails is left to the watch. own and service are this node's
// service ID and service name (the loop owns a.opts.Registration).
func (a *Agent) followHints(ctx context.Context, own, service string) {
	w := &catalogsync.Watcher{Client: a.opts.Consul, Datacenter: a.opts.Datacenter, Logger: a.logger}
	w.RunHints(ctx, a.opts.HintKey, func(h catalogsync.Hint) {
		if h.ServiceID == own {
			return
		}
		a.mu.Lock()
		a.hints++
		known := a.snapshot != nil && h.Index <= a.snapshot.Index
		a.mu.Unlock()
		if known {
			return // the list already has the change
		}
		// A server answering stale reads may lag the one the writer read:
		// wait (briefly) until it has the hint's index.
		q := &api.QueryOptions{Datacenter: a.opts.Datacenter, WaitIndex: h.Index - 1, WaitTime: hintReadWait}
		start := time.Now()
		e, index, err := catalogsync.ReadInstance(ctx, a.opts.Consul, service, h, q)
		a.logger.Debug("hint read", "service_id", h.ServiceID, "index", index, "found", e != nil, "took", time.Since(start), "err", err)
		if err != nil {
			a.logger.Debug("hint not read; the watch brings the change", "service_id", h.ServiceID, "err", err)
			return
		}
		a.mu.Lock()
		a.hintReads++
		applied := a.snapshot != nil && index > a.snapshot.Index
		if applied {
			a.hinted[h.ServiceID] = catalogsync.Hinted{Entry: e, Index: index}
			a.hintsApplied++
		}
		a.mu.Unlock()
		if applied {
			a.markDirty()
		}
	})
}

// announce writes a hint for this node's entry once the catalog shows it as
// registered now, in the background. Without hints it does nothing.
func (a *Agent) announce(ctx context.Context) {
	if a.opts.HintKey == "" {
		return
	}
	reg := a.opts.Registration
	go a.writeHint(ctx, reg, func(e *peers.Entry) bool { return e != nil && reg.Matches(*e) })
}

// writeHint writes the hint for reg's entry once the catalog shows it as
// shown says (catalogsync.Announce). Failures are logged: the watch brings
// every change without hints.
func (a *Agent) writeHint(ctx context.Context, reg catalogsync.Registration, shown func(*peers.Entry) bool) {
	node, err := a.consulNode()
	if err != nil {
		a.logger.Warn("no hint written: the local agent's node name is unknown", "err", err)
		return
	}
	h, err := catalogsync.Announce(ctx, a.opts.Consul, a.opts.HintKey, node, reg, shown)
	switch {
	case errors.Is(err, context.Canceled):
		// the agent stops
	case err != nil:
		a.logger.Warn("no hint written", "err", err)
	default:
		a.logger.Debug("hint written", "key", a.opts.HintKey, "service_id", h.ServiceID, "index", h.Index)
	}
}

// consulNode is the local agent's node name (asked once).
func (a *Agent) consulNode() (string, error) {
	a.mu.Lock()
	node := a.consulNodeName
	a.mu.Unlock()
	if node != "" {
		return node, nil
	}
	node, err := a.opts.Consul.Agent().NodeName()
	if err != nil {
		return "", err
	}
	a.mu.Lock()
	a.consulNodeName = node
	a.mu.Unlock()
	return node, nil
}
