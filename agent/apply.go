package agent

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/catalogsync"
	"meshd.dev/meshd/gateway"
	"meshd.dev/meshd/peers"
)

type result struct {
	peers.Result
	writes uint64
	// heldPrefix is the allowed IPs of each held peer, read from the
	// kernel the plan was made against before Commit (which may change
	// Result.Observed in place); Observed is cleared then.
	heldPrefix map[wgtypes.Key]netip.Prefix
}

// commit records res's plan as written, keeping what status needs of the
// kernel it was planned against.
func (a *Agent) commit(res *result) {
	for _, h := range res.Plan.Held {
		i, ok := slices.BinarySearchFunc(res.Observed.Peers, h.PublicKey, func(kp peers.KernelPeer, k wgtypes.Key) int {
			return bytes.Compare(kp.PublicKey[:], k[:])
		})
		if ok && len(res.Observed.Peers[i].AllowedIPs) > 0 {
			if res.heldPrefix == nil {
				res.heldPrefix = map[wgtypes.Key]netip.Prefix{}
			}
			res.heldPrefix[h.PublicKey] = res.Observed.Peers[i].AllowedIPs[0]
		}
	}
	a.planner.Commit(res.Result)
	res.Observed = peers.Observed{}
}

// apply brings the kernel to what snap asks for: the planner's plan,
// written through the link. Without a catalog read yet (snap nil) the link
// is made sure of and the peers already in the kernel stay as they are.
//
// changed, when not nil, are the only service IDs whose entries changed
// since the last apply (peers.Planner.PlanChanged). The plan and its
// commit run under a.mu, and the status's peer source is set there: the
// planner changes the desired set in place, and Status reads it.
func (a *Agent) apply(snap *catalogsync.Snapshot, changed []string, now time.Time) (res result, err error) {
	before := a.opts.Link.Writes()
	defer func() { res.writes = a.opts.Link.Writes() - before }()
	a.mu.Lock()
	defer func() {
		a.status.src = peerSource{res: res, err: err}
		a.mu.Unlock()
	}()
	if !a.planner.Trusts() || snap == nil {
		if err := a.opts.Link.Ensure(); err != nil {
			a.planner.Forget()
			return res, fmt.Errorf("ensure link: %w", err)
		}
	}
	if snap == nil {
		return res, nil
	}
	a.revoke(snap.Revocations)
	self := peers.Self{Node: a.opts.Registration.Node, PublicKey: a.opts.Registration.PublicKey, Prefix: a.opts.Prefix}
	// The view's list is changed in place: always PlanChanged (nil: a
	// whole plan).
	res.Result, err = a.planner.PlanChanged(snap.Entries, changed, self, a.opts.Link.Observe, now)
	if err != nil {
		return res, fmt.Errorf("observe kernel: %w", err)
	}
	if a.opts.Gateway != nil {
		a.opts.Gateway.SetGateways(gateway.Hosts(res.Desired))
	}
	plan := res.Plan
	if plan.Breaker {
		a.logger.Warn("mass-removal circuit breaker tripped: removals held until released",
			"pending", plan.Pending, "peers", len(res.Observed.Peers), "max_removal_fraction", a.opts.MaxRemovalFraction)
	}
	if plan.Empty() {
		a.logger.Debug("reconcile: kernel matches catalog", "peers", len(res.Desired), "held", len(plan.Held))
		a.commit(&res)
		return res, nil
	}
	a.logger.Info("applying plan", "upsert", len(plan.Upsert), "remove", len(plan.Remove),
		"add_routes", len(plan.AddRoutes), "del_routes", len(plan.DelRoutes), "held", len(plan.Held))
	if err := a.opts.Link.Apply(plan); err != nil {
		return res, fmt.Errorf("apply plan: %w", err)
	}
	a.commit(&res)
	return res, nil
}
