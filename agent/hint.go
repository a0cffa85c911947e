package agent

import (
	"context"
	"errors"
	"time"

	"github.com/hashicorp/consul/api"

	"meshd.dev/meshd/catalogsync"
	"meshd.dev/meshd/peers"
)

// maxHintReads bounds the reads one batch of hints makes: more changes at
// once are left to the watch of the whole list.
const maxHintReads = 16

// announceTimeout bounds how long this node waits for its own change to
// reach the catalog before it fires a hint.
const announceTimeout = 15 * time.Second

// followHints reads every instance a hint names (but this node's own) and
// puts what it reads in the desired state until the watch's list catches
// up (catalogsync.Overlay). A read that fails is left to the watch.
// own and service are this node's service ID and service name (the loop
// owns a.opts.Registration).
func (a *Agent) followHints(ctx context.Context, own, service string) {
	w := &catalogsync.Watcher{Client: a.opts.Consul, Datacenter: a.opts.Datacenter, Logger: a.logger}
	w.RunHints(ctx, a.opts.HintEvent, func(hints []catalogsync.Hint) {
		if len(hints) > maxHintReads {
			a.logger.Debug("too many hints at once; the watch brings the changes", "hints", len(hints))
			return
		}
		changed := false
		for _, h := range hints {
			if h.ServiceID == own {
				continue
			}
			start := time.Now()
			e, index, err := catalogsync.ReadInstance(ctx, a.opts.Consul, service, h, &api.QueryOptions{Datacenter: a.opts.Datacenter})
			a.logger.Debug("hint read", "service_id", h.ServiceID, "index", index, "found", e != nil, "took", time.Since(start), "err", err)
			if err != nil {
				a.logger.Debug("hint not read; the watch brings the change", "service_id", h.ServiceID, "err", err)
				continue
			}
			a.mu.Lock()
			a.hintReads++
			if a.snapshot != nil && index > a.snapshot.Index {
				a.hinted[h.ServiceID] = catalogsync.Hinted{Entry: e, Index: index}
				a.hintsApplied++
				changed = true
			}
			a.mu.Unlock()
		}
		if changed {
			a.markDirty()
		}
	})
}

// announce fires a hint for this node's entry once the catalog shows it as
// registered now, in the background. Without hints it does nothing.
func (a *Agent) announce(ctx context.Context) {
	if a.opts.HintEvent == "" {
		return
	}
	reg := a.opts.Registration
	go a.fireHint(ctx, reg, func(e *peers.Entry) bool { return e != nil && reg.Matches(*e) })
}

// announceGone fires a hint once the catalog no longer shows this node's
// entry, waiting for it.
func (a *Agent) announceGone(ctx context.Context) {
	if a.opts.HintEvent == "" {
		return
	}
	a.fireHint(ctx, a.opts.Registration, func(e *peers.Entry) bool { return e == nil })
}

// fireHint waits (up to announceTimeout) until the catalog shows reg's
// entry as done says, then fires the hint: peers woken by it read the
// catalog, so it must have the change by then. Failures are logged: the
// watch brings every change without hints.
func (a *Agent) fireHint(ctx context.Context, reg catalogsync.Registration, done func(*peers.Entry) bool) {
	ctx, cancel := context.WithTimeout(ctx, announceTimeout)
	defer cancel()
	node, err := a.consulNode()
	if err != nil {
		a.logger.Warn("no hint fired: the local agent's node name is unknown", "err", err)
		return
	}
	h := catalogsync.Hint{ConsulNode: node, ServiceID: reg.ID()}
	if err := catalogsync.WaitInstance(ctx, a.opts.Consul, reg.Service, h, done); err != nil {
		if errors.Is(err, context.Canceled) {
			return // the agent stops
		}
		a.logger.Warn("no hint fired: the catalog did not show this node's change", "err", err)
		return
	}
	if err := catalogsync.FireHint(ctx, a.opts.Consul, a.opts.HintEvent, h); err != nil {
		a.logger.Warn("no hint fired", "err", err)
		return
	}
	a.logger.Debug("hint fired", "event", a.opts.HintEvent, "service_id", h.ServiceID)
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
