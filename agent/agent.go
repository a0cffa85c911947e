package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/catalogsync"
	"meshd.dev/meshd/gateway"
	"meshd.dev/meshd/health"
	"meshd.dev/meshd/internal/loop"
	"meshd.dev/meshd/netlinkx"
	"meshd.dev/meshd/peers"
	"meshd.dev/meshd/snapshot"
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
	// SnapshotPath is where the last good catalog read is kept and read
	// back at start; empty disables it.
	SnapshotPath   string
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

// Agent runs the control loop of one mesh node.
type Agent struct {
	opts   Options
	logger *slog.Logger
	loop   loop.Loop

	// Owned by the loop goroutine.
	stopGateway func() // stops the gateway role's loop and waits for it
	// planner holds all planning memory, its model of the kernel among it:
	// a change from the watch is planned against that model without
	// reading a device of thousands of peers; the kernel itself is read at
	// start, every ResyncInterval, after a failure or a write outside
	// reconcile (the loop calls Forget).
	planner      peers.Planner
	lastRegister time.Time
	// registerBackoff is the wait before registering again while the
	// catalog disagrees (see ensureRegistered).
	registerBackoff time.Duration
	registered      uint64 // catalog writes made
	// reconciles, reconcileErrors and reconcileSeconds count the loop's work.
	reconciles, reconcileErrors uint64
	reconcileSeconds            float64
	// notConvergedSince is when the last run of converged reconciles ended.
	notConvergedSince time.Time
	// rotatedAt is when the key last changed; kickAt when to reset the
	// sessions that have not handshaken since (kickStalePeers), or zero.
	rotatedAt, kickAt time.Time
	// lastSummary is the health summary last published, at lastSummaryAt.
	lastSummary   health.Summary
	lastSummaryAt time.Time
	// lastSummaryCheck is when a summary was last computed (written or
	// not): computing one reads the device.
	lastSummaryCheck time.Time

	mu       sync.Mutex // guards the fields below
	snapshot *catalogsync.Snapshot
	// fromDisk is set while snapshot is the saved one, read at start, and
	// no catalog read has succeeded yet.
	fromDisk bool
	savedAt  time.Time
	status   Status
	// peerSource makes status's peer list when it is asked for.
	peerSource peerSource
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
			MaxFraction: opts.MaxRemovalFraction, Floor: opts.BreakerFloor},
	}
	a.loop = loop.Loop{Reconcile: a.reconcile, Resync: opts.ResyncInterval, OnResync: a.planner.Forget}
	return a
}

// Run runs the loop until ctx is done (returning nil, with everything left
// in place) or the node leaves (returning ErrLeft, or the leave's errors).
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	a.loadSnapshot()
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
	saves := make(chan struct{}, 1)
	wg.Add(2)
	go func() {
		defer wg.Done()
		a.opts.Catalog.Watch(ctx, a.opts.Registration.ID(), func(s catalogsync.Snapshot) {
			a.mu.Lock()
			a.snapshot, a.fromDisk = &s, false
			a.mu.Unlock()
			a.loop.Mark()
			select {
			case saves <- struct{}{}:
			default:
			}
		})
	}()
	go func() {
		defer wg.Done()
		a.saveSnapshots(ctx, saves)
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
	a.opts.Registration.PublicKey = key.PublicKey()
	if err := a.opts.Catalog.Publish(ctx, a.opts.Registration, false); err != nil {
		// The catalog still announces the old key: go back to it.
		a.opts.Registration.PublicKey = oldPub
		a.opts.Link.SetPrivateKey(oldPriv)
		return errors.Join(fmt.Errorf("publish the new key: %w", err), a.opts.Link.Ensure())
	}
	// The watch shows the old entry until the catalog has the new one:
	// that is not a reason to register again (see ensureRegistered).
	a.lastRegister, a.registerBackoff = time.Now(), time.Second
	a.registered++
	a.rotatedAt = time.Now()
	a.logger.Info("rotated key", "old_public_key", oldPub, "public_key", key.PublicKey())
	a.loop.Mark()
	// Peers learn the new key within a catalog propagation; by then, each
	// should have handshaken with the new key. Check once, after a second.
	a.kickAt = a.rotatedAt.Add(time.Second)
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
		if p.LastHandshake.Before(a.rotatedAt) {
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

func (a *Agent) loadSnapshot() {
	if a.opts.SnapshotPath == "" {
		return
	}
	saved, err := snapshot.Load(a.opts.SnapshotPath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		a.logger.Info("no saved catalog snapshot; waiting for the catalog", "path", a.opts.SnapshotPath)
		return
	case err != nil:
		a.logger.Error("ignoring unreadable catalog snapshot", "err", err)
		return
	}
	a.mu.Lock()
	a.snapshot, a.fromDisk, a.savedAt = &saved.Snapshot, true, saved.SavedAt
	a.mu.Unlock()
	a.logger.Info("applying saved catalog snapshot until the catalog answers",
		"entries", len(saved.Entries), "index", saved.Index, "saved_at", saved.SavedAt)
}

// snapshotInterval spaces snapshot writes: a large catalog is megabytes of
// JSON, and a churning one must not cost a file write per change. The
// kernel keeps whatever was applied since; a snapshot a few seconds old
// only means a node added since is held through its grace after a restart
// without Consul, not removed.
const snapshotInterval = 5 * time.Second

// saveSnapshots writes the newest catalog read whenever one is signalled on
// saves, at most once per snapshotInterval, and once more when ctx ends if
// a read is still unsaved.
func (a *Agent) saveSnapshots(ctx context.Context, saves <-chan struct{}) {
	var saved *catalogsync.Snapshot
	save := func() {
		a.mu.Lock()
		s := a.snapshot
		a.mu.Unlock()
		if s != nil && s != saved && !a.fromDiskNow() {
			a.saveSnapshot(*s, time.Now())
			saved = s
		}
	}
	for {
		select {
		case <-ctx.Done():
			save()
			return
		case <-saves:
			save()
		}
		select {
		case <-ctx.Done():
			save()
			return
		case <-time.After(snapshotInterval):
		}
	}
}

func (a *Agent) fromDiskNow() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.fromDisk
}

func (a *Agent) saveSnapshot(s catalogsync.Snapshot, now time.Time) {
	if a.opts.SnapshotPath == "" {
		return
	}
	if err := snapshot.Save(a.opts.SnapshotPath, s, now); err != nil {
		a.logger.Error("save catalog snapshot", "err", err)
		return
	}
	a.mu.Lock()
	a.savedAt = now
	a.mu.Unlock()
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
	if !a.kickAt.IsZero() && !start.Before(a.kickAt) {
		a.kickAt = time.Time{}
		a.planner.Forget()
		a.kickStalePeers()
	}
	a.mu.Lock()
	snap := a.snapshot
	a.mu.Unlock()

	res, err := a.apply(snap, start)
	registerDue := a.ensureRegistered(ctx, snap, start)
	a.reconciles++
	a.reconcileSeconds += time.Since(start).Seconds()
	if err != nil {
		a.reconcileErrors++
	}
	a.setStatus(snap, res, err, start)
	summaryDue := a.publishSummary(ctx, start)
	if err != nil {
		a.logger.Error("reconcile failed; retrying after a backoff", "err", err)
		return loop.Earliest(summaryDue, registerDue, a.kickAt), err
	}
	return loop.Earliest(res.Plan.NextDeadline(), summaryDue, registerDue, a.kickAt), nil
}

type result struct {
	peers.Result
	writes uint64
}

// apply brings the kernel to what snap asks for: the planner's plan,
// written through the link. Without a catalog read yet (snap nil) the link
// is made sure of and the peers already in the kernel stay as they are.
func (a *Agent) apply(snap *catalogsync.Snapshot, now time.Time) (result, error) {
	var res result
	before := a.opts.Link.Writes()
	defer func() { res.writes = a.opts.Link.Writes() - before }()
	if !a.planner.Trusts() || snap == nil {
		if err := a.opts.Link.Ensure(); err != nil {
			a.planner.Forget()
			return res, fmt.Errorf("ensure link: %w", err)
		}
	}
	if snap == nil {
		return res, nil
	}
	self := peers.Self{Node: a.opts.Registration.Node, PublicKey: a.opts.Registration.PublicKey, Prefix: a.opts.Prefix}
	var err error
	if res.Result, err = a.planner.Plan(snap.Entries, self, a.opts.Link.Observe, now); err != nil {
		return res, fmt.Errorf("observe kernel: %w", err)
	}
	plan := res.Plan
	if plan.Breaker {
		a.logger.Warn("mass-removal circuit breaker tripped: removals held until released",
			"pending", plan.Pending, "peers", len(res.Observed.Peers), "max_removal_fraction", a.opts.MaxRemovalFraction)
	}
	if plan.Empty() {
		a.logger.Debug("reconcile: kernel matches catalog", "peers", len(res.Desired), "held", len(plan.Held))
		a.planner.Commit(res.Result)
		return res, nil
	}
	a.logger.Info("applying plan", "upsert", len(plan.Upsert), "remove", len(plan.Remove),
		"add_routes", len(plan.AddRoutes), "del_routes", len(plan.DelRoutes), "held", len(plan.Held))
	if err := a.opts.Link.Apply(plan); err != nil {
		return res, fmt.Errorf("apply plan: %w", err)
	}
	a.planner.Commit(res.Result)
	return res, nil
}

// ensureRegistered registers at start, and again when the catalog lacks
// this node's entry or shows a different one (the local agent lost its
// state, someone deregistered or rewrote it through the catalog, or
// meshd's identity changed). Consul's ACLs cannot stop another host's token
// from doing that (see README, "Consul ACLs"), so it is put back at once;
// while the catalog keeps disagreeing, the waits between attempts double
// from 1 to 10 seconds. It returns when to look again, or zero.
func (a *Agent) ensureRegistered(ctx context.Context, snap *catalogsync.Snapshot, now time.Time) (again time.Time) {
	var shown *peers.Entry // this node's entry as the catalog shows it
	if snap != nil {
		for i, e := range snap.Entries {
			if a.opts.Registration.Matches(e) {
				a.registerBackoff = 0
				return time.Time{}
			}
			if e.ServiceID == a.opts.Registration.ID() {
				shown = &snap.Entries[i]
			}
		}
	}
	if next := a.lastRegister.Add(a.registerBackoff); !a.lastRegister.IsZero() && now.Before(next) {
		return next
	}
	a.lastRegister = now
	a.registerBackoff = min(max(2*a.registerBackoff, time.Second), 10*time.Second)
	again = now.Add(a.registerBackoff)
	if a.registered > 0 {
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
	if err := a.opts.Catalog.Publish(ctx, a.opts.Registration, a.registered > 0); err != nil {
		a.logger.Warn("register failed; will retry", "err", err)
		return again
	}
	a.registered++
	a.logger.Info("registered", "service_id", a.opts.Registration.ID(), "meta", a.opts.Registration.Meta())
	return again
}
