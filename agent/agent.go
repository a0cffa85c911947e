package agent

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"meshd.dev/meshd/catalogsync"
	"meshd.dev/meshd/gateway"
	"meshd.dev/meshd/internal/loop"
	"meshd.dev/meshd/netlinkx"
	"meshd.dev/meshd/peers"
)

// ErrLeft is returned by Run after the node left the mesh through Leave.
var ErrLeft = errors.New("node left the mesh")

// Options configure an Agent.
type Options struct {
	Registration catalogsync.Registration
	Prefix       netip.Prefix
	ListenPort   int
	Rules        peers.Rules
	RemovalGrace time.Duration
	// MaxRemovalFraction and BreakerFloor configure the mass-removal
	// circuit breaker (see peers.Removal); zero MaxRemovalFraction turns it
	// off.
	MaxRemovalFraction float64
	BreakerFloor       int
	// MaxPeers caps the peers (peers.Planner.MaxPeers); zero: no cap.
	MaxPeers int
	// SnapshotPath is where the last good catalog read is kept and read
	// back at start; empty disables it.
	SnapshotPath string
	// MemoryPath is where the planner's memory (serials, the breaker's
	// window) is kept across restarts; empty disables it.
	MemoryPath     string
	ResyncInterval time.Duration
	// Catalog is the agent's only way to Consul (*catalogsync.Catalog).
	Catalog Catalog
	Link    *netlinkx.Link
	// Gateway, when set, runs this node's gateway role beside the mesh
	// loop: it starts and stops with Run, shows in Status, and is taken
	// down by Leave.
	Gateway *gateway.Runner
	Logger  *slog.Logger
}

// Agent runs the control loop of one mesh node. Its fields but view and
// status belong to the loop's goroutine.
type Agent struct {
	opts   Options
	logger *slog.Logger
	loop   loop.Loop
	// planner holds all planning memory, its model of the kernel among it:
	// a change from the watch is planned against that model without
	// reading a device of thousands of peers; the kernel itself is read at
	// start, every ResyncInterval, after a failure or a write outside
	// reconcile (Forget).
	planner peers.Planner
	view    view        // the catalog as the loop sees it
	reg     registrar   // this node's own entry
	rot     rotation    // the last key rotation
	revoked revocations // the authority's, verified
	memory  struct {
		next  time.Time // no write before
		dirty bool      // the last write failed
	}
	stats       stats // the loop's work, for status
	summary     summaryState
	stopGateway func()        // stops the gateway role's loop and waits for it
	saves       chan struct{} // wakes the snapshot saver

	mu     sync.Mutex // guards status
	status statusState
}

// New returns an agent; Run starts it.
func New(opts Options) *Agent {
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	a := &Agent{
		opts:   opts,
		logger: logger,
		planner: peers.Planner{Rules: opts.Rules, Grace: opts.RemovalGrace,
			MaxFraction: opts.MaxRemovalFraction, Floor: opts.BreakerFloor, MaxPeers: opts.MaxPeers},
	}
	if opts.Link != nil {
		// A first sync writes peers while later entries are verified.
		a.planner.Prewrite = opts.Link.Apply
	}
	a.loop = loop.Loop{Reconcile: a.reconcile, Resync: opts.ResyncInterval, ResyncDelay: resyncDelay, OnResync: a.planner.Forget}
	return a
}

// resyncDelay is how long the resync's read of the whole kernel (hundreds
// of ms at tens of thousands of peers) waits after its tick: a change
// that came at the same moment is applied first, against the kernel as
// last read (a host continued after a stop sees every timer fire at
// once, and its watches' answers a moment later).
const resyncDelay = 250 * time.Millisecond

// Run runs the loop until ctx is done (returning nil, with everything left
// in place) or the node leaves (returning ErrLeft, or the leave's errors).
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	if a.opts.Rules.Trust == nil || len(a.opts.Rules.Trust.Authorities) == 0 {
		return errors.New("no trusted authority: every entry would be refused (set trust.authorities)")
	}
	a.loadSnapshot()
	a.loadMemory()
	defer func() { a.saveMemory(time.Now(), true) }()
	gwCtx, cancelGateway := context.WithCancel(ctx)
	gwDone := make(chan struct{})
	if a.opts.Gateway != nil {
		go func() {
			defer close(gwDone)
			a.opts.Gateway.Run(gwCtx)
		}()
	} else {
		close(gwDone)
	}
	a.stopGateway = func() {
		cancelGateway()
		<-gwDone
	}
	defer a.stopGateway()
	// The loop signals saves when it took a new view (the saver copies
	// what the loop took).
	a.saves = make(chan struct{}, 1)
	own := a.opts.Registration.ID() // read here: the loop owns Registration
	wg.Add(2)
	go func() {
		defer wg.Done()
		a.opts.Catalog.Watch(ctx, own, func(s catalogsync.Snapshot) {
			a.view.set(s)
			a.loop.Mark()
		})
	}()
	go func() {
		defer wg.Done()
		a.saveSnapshots(ctx, a.saves)
	}()

	if err := a.loop.Run(ctx); err != nil {
		return err
	}
	a.logger.Info("stopping; registration, link, peers and routes stay in place")
	return nil
}

// Leave makes the running loop deregister the node and remove its link and
// routes; Run then returns. It returns what the leave returned.
func (a *Agent) Leave(ctx context.Context) error {
	var err error
	if derr := a.loop.Do(ctx, func(ctx context.Context) error {
		if err = a.doLeave(ctx); err != nil {
			return err
		}
		return ErrLeft
	}); derr != nil {
		return derr
	}
	return err
}

// ReleaseRemovals lets the removals the circuit breaker holds go ahead: every
// peer now pending removal may be removed once its grace has ended. It
// returns how many peers were released.
func (a *Agent) ReleaseRemovals(ctx context.Context) (int, error) {
	var n int
	err := a.loop.Do(ctx, func(context.Context) error {
		n = a.planner.Release()
		a.logger.Warn("operator released held removals", "peers", n)
		a.loop.Mark()
		return nil
	})
	return n, err
}

func (a *Agent) doLeave(ctx context.Context) error {
	remove := []func() error{a.opts.Link.Remove}
	if a.opts.Gateway != nil {
		remove = append(remove, func() error {
			a.stopGateway()
			return a.opts.Gateway.Remove()
		})
	}
	return Leave(ctx, a.opts.Catalog, a.opts.Registration, remove...)
}

// reconcile brings the kernel to the desired state and returns when it
// must run again at the latest (a grace ending, a registration or summary
// due), or zero.
func (a *Agent) reconcile(ctx context.Context) (time.Time, error) {
	start := time.Now()
	if !a.rot.kickAt.IsZero() && !start.Before(a.rot.kickAt) {
		a.rot.kickAt = time.Time{}
		a.planner.Forget()
		a.kickStalePeers()
	}
	snap, changed, took := a.view.take()
	if took {
		select {
		case a.saves <- struct{}{}:
		default:
		}
	}

	res, err := a.apply(snap, changed, start)
	registerDue := a.ensureRegistered(ctx, snap, changed, start)
	if err != nil {
		a.view.replan() // what changed may not all be planned: plan everything next
	}
	a.stats.count(start, err)
	a.setStatus(snap, res, err, start)
	summaryDue := a.publishSummary(ctx, start)
	if err != nil {
		a.logger.Error("reconcile failed; retrying after a backoff", "err", err)
		return loop.Earliest(summaryDue, registerDue, a.rot.kickAt), err
	}
	memoryDue := a.saveMemory(start, false)
	return loop.Earliest(res.Plan.NextDeadline(), summaryDue, registerDue, a.rot.kickAt, memoryDue, a.planner.NextExpiry()), nil
}
