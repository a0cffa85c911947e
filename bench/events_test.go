package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"time"

	"github.com/hashicorp/consul/api"

	"meshd.dev/meshd/catalogsync"
)

// kinds are the probe's events, in the order they go round.
var kinds = []string{"join", "rotate", "endpoint", "leave"}

// event is one event to the probe as the targets saw it.
type event struct {
	kind   string
	old, s Sim // the probe before and after
	// sent is when the write was sent, acked when Consul acknowledged it.
	sent, acked time.Time
	// hinted is when the hint's write was sent (zero: hints are off).
	hinted time.Time
	// done is, per target, when its kernel showed the change; errs says
	// why it did not within the timeout.
	done []time.Time
	errs []error
}

// runEvent makes the probe join (as simulated node i), rotate its key,
// change its endpoint or leave, writes that to Consul in one transaction,
// and times each target: its packets (see prober) and, for meshd, the
// route to the probe's prefix after a join or leave.
//
// The probe changes first, then after a random 200-400 ms the write: events
// come one at a time, and the benchmark measures the latency of a change,
// not how a burst is absorbed (meshd spaces its wakes at 10/s after a burst
// of 5, by design).
func runEvent(ctx context.Context, c *api.Client, pb *probe, targets []*target, kind string, i int, timeout time.Duration) (event, error) {
	ev := event{kind: kind, old: pb.Sim, done: make([]time.Time, len(targets)), errs: make([]error, len(targets))}
	if kind != "join" {
		if err := reachAll(ctx, targets, netip.AddrPortFrom(meshAddr(pb.Sim.Prefix), probeEchoPort)); err != nil {
			return ev, fmt.Errorf("before the %s: %w", kind, err)
		}
		// Echoes of datagrams still in flight must leave the probe before
		// it changes: one sent from its new port would show every target
		// the new endpoint (WireGuard roaming) before Consul did.
		time.Sleep(50 * time.Millisecond)
	}
	var err error
	switch kind {
	case "join":
		err = pb.become(i)
	case "rotate":
		err = pb.rotate()
	case "endpoint":
		err = pb.move()
	}
	if err != nil {
		return ev, fmt.Errorf("probe %s: %w", kind, err)
	}
	ev.s = pb.Sim
	write := func() error { return Txn(ctx, c, ev.s.Ops()) }
	var route *routeCond
	switch kind {
	case "join":
		route = &routeCond{prefix: ev.s.Prefix, want: true}
	case "leave":
		write = func() error { return Txn(ctx, c, ev.s.DeleteOps()) }
		route = &routeCond{prefix: ev.s.Prefix, want: false}
	}
	time.Sleep(200*time.Millisecond + rand.N(200*time.Millisecond))

	pctx, stop := context.WithTimeout(ctx, timeout)
	defer stop()
	type probed struct {
		at  time.Time
		err error
	}
	results := make([]chan probed, len(targets))
	dst := netip.AddrPortFrom(meshAddr(ev.s.Prefix), probeEchoPort)
	for i, tg := range targets {
		if tg.system == Meshd {
			tg.arm(route)
		}
		results[i] = make(chan probed, 1)
		go func() {
			at, err := tg.probe.measure(pctx, dst, kind != "leave")
			results[i] <- probed{at, err}
		}()
	}
	ev.sent = time.Now()
	if err := write(); err != nil {
		return ev, fmt.Errorf("%s event: %w", kind, err)
	}
	ev.acked = time.Now()
	if *hintFlag != "" {
		// As meshd on the changed node does (catalogsync.Announce): read
		// the instance until the catalog shows the change (here at once:
		// the write is acknowledged), then write the hint with that index,
		// carrying the entry. A leave carries the node's signed
		// withdrawal instead, as meshd's does.
		h := catalogsync.Hint{ConsulNode: ev.s.Name(), ServiceID: ev.s.Registration().ID()}
		if kind == "leave" {
			h.Withdrawal = ev.s.Registration().Withdrawal()
		}
		if h, err = hintFor(ctx, c, h); err != nil {
			return ev, err
		}
		ev.hinted = time.Now() // the key may wake its watchers before the write returns
		if _, err := catalogsync.WriteHint(ctx, c, *hintFlag, h); err != nil {
			return ev, err
		}
	}
	for i, tg := range targets {
		r := <-results[i]
		ev.done[i], ev.errs[i] = r.at, r.err
		for r.err == nil {
			at, ok := tg.routeDone()
			if ok {
				ev.done[i] = maxTime(ev.done[i], at)
				break
			}
			if pctx.Err() != nil {
				ev.errs[i] = fmt.Errorf("route to %s: %w", ev.s.Prefix, pctx.Err())
				break
			}
			time.Sleep(time.Millisecond)
		}
		tg.arm(nil)
	}
	return ev, nil
}

// reachAll waits until every target reaches dst: a change is measured from
// a state where every target holds the probe with a session (else what a
// target showed would include WireGuard's 5 s handshake retry, left from
// an earlier event).
func reachAll(ctx context.Context, targets []*target, dst netip.AddrPort) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	errs := make(chan error, len(targets))
	for _, tg := range targets {
		go func() {
			_, err := tg.probe.measure(ctx, dst, true)
			if err != nil {
				err = fmt.Errorf("%s does not reach the probe: %w", tg.name, err)
			}
			errs <- err
		}()
	}
	var first error
	for range targets {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}
