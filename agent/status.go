package agent

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/catalogsync"
	"meshd.dev/meshd/gateway"
	"meshd.dev/meshd/health"
	"meshd.dev/meshd/netlinkx"
)

// Peer states in Status.
const (
	PeerApplied  = "applied"
	PeerPending  = "pending"
	PeerRejected = "rejected"
	PeerHeld     = "removal-held"
)

// Status is the agent's view of itself after the last reconcile. It is
// served as JSON on the status socket.
type Status struct {
	Node        string        `json:"node"`
	Interface   string        `json:"interface"`
	Mode        string        `json:"mode"`
	PublicKey   string        `json:"public_key"`
	ListenPort  int           `json:"listen_port"`
	MeshAddress string        `json:"mesh_address"`
	Prefix      string        `json:"prefix"`
	Catalog     CatalogStatus `json:"catalog"`
	Peers       []PeerStatus  `json:"peers"`
	// Converged is true when the kernel, read when the status is asked
	// for, holds exactly what the catalog asks for (removals in their grace
	// aside), and the last reconcile succeeded from a live catalog read.
	// Differences says what is not.
	Converged   bool     `json:"converged"`
	Differences []string `json:"differences,omitempty"`
	// NotConvergedSince is when the node last stopped being converged.
	NotConvergedSince *time.Time `json:"not_converged_since,omitempty"`
	// LinkPresent says whether the WireGuard device could be read.
	LinkPresent   bool      `json:"link_present"`
	LastReconcile time.Time `json:"last_reconcile"`
	LastError     string    `json:"last_error,omitempty"`
	KernelWrites  uint64    `json:"kernel_writes"`
	// Reconciles, ReconcileErrors and ReconcileSeconds count the control
	// loop's work since start.
	Reconciles       uint64  `json:"reconciles"`
	ReconcileErrors  uint64  `json:"reconcile_errors"`
	ReconcileSeconds float64 `json:"reconcile_seconds"`
	// Registrations counts the catalog writes this agent made: each one
	// wakes every watcher in the fleet, so it stays at 1 in steady state.
	Registrations uint64 `json:"registrations"`
	// Impersonation says that the catalog holds entries for this node that
	// this host did not publish: its own instance rewritten (counted in
	// catalog reads), or other instances naming this node. Other hosts
	// refuse them unless signed by this host's identity; this host puts its
	// own back.
	Impersonation *Impersonation `json:"impersonation,omitempty"`
	// Revoked counts the nodes and identities the authority revoked (in
	// meshd/trust/revocations/, verified); InvalidRevocations the values
	// there that do not verify (ignored).
	Revoked int `json:"revoked"`
	// EntriesParsed counts the catalog entries parsed and verified since
	// start: an unchanged entry is verified once.
	EntriesParsed uint64 `json:"entries_parsed"`
	// Withdrawals counts the leaving hosts' signed withdrawals the hints
	// brought: verified (the peer's removal started at once) and refused
	// (not signed by the entry's own identity: nothing changed).
	Withdrawals        Withdrawals `json:"withdrawals"`
	InvalidRevocations int         `json:"invalid_revocations,omitempty"`
	// CredentialExpires is when this host's credential expires.
	CredentialExpires time.Time `json:"credential_expires,omitzero"`
	Breaker           Breaker   `json:"breaker"`
	// Gateway is the gateway role's state, on gateway nodes only.
	Gateway *gateway.Status `json:"gateway,omitempty"`
}

// Impersonation is what the catalog showed for this node that this host
// did not publish.
type Impersonation struct {
	// Rewritten counts the reconciles that saw an instance of this node's
	// service ID saying something else than this host published.
	Rewritten uint64 `json:"rewritten"`
	// Others are other service IDs whose entries name this node.
	Others []string `json:"others,omitempty"`
}

// Breaker is the mass-removal circuit breaker's state.
type Breaker struct {
	Tripped bool `json:"tripped"`
	// Pending is how many peers are pending removal (in or past their
	// grace); Held is how many of them only the breaker keeps.
	Pending  int `json:"pending"`
	Held     int `json:"held"`
	Released int `json:"released"`
}

// CatalogStatus is the watch's state.
type CatalogStatus struct {
	Reachable    bool      `json:"reachable"`
	LastIndex    uint64    `json:"last_index"`
	LastGoodRead time.Time `json:"last_good_read"`
	LastError    string    `json:"last_error,omitempty"`
	Entries      int       `json:"entries"`
	// SnapshotInUse is true while the desired state comes from the saved
	// snapshot because the catalog has not answered since start.
	SnapshotInUse bool      `json:"snapshot_in_use"`
	SnapshotSaved time.Time `json:"snapshot_saved,omitempty"`
	// Reads counts the watch's successful reads.
	Reads uint64 `json:"reads"`
	// Hints counts the hints that named another node's entry; HintReads
	// the instances they made this node read (a hint the list already has
	// is not read); HintsCarried the hints whose entry came in the hint
	// (not read); HintsApplied the reads and carried entries newer than
	// the list they went into.
	Hints        uint64 `json:"hints"`
	HintReads    uint64 `json:"hint_reads"`
	HintsCarried uint64 `json:"hints_carried"`
	HintsApplied uint64 `json:"hints_applied"`
	// HintRingReads counts reads of the hint ring (a wake skipped hints);
	// HintGaps the times hints were missed that the ring could not give
	// back (or a hint could not be read), each answered by a read of the
	// whole list; HintCatchUps the reads of the entries signed since the
	// last list that came before it (a gap the ring could not give back).
	HintRingReads uint64 `json:"hint_ring_reads"`
	HintGaps      uint64 `json:"hint_gaps"`
	HintCatchUps  uint64 `json:"hint_catch_ups"`
	// OlderKept counts instance versions a list showed older than an
	// earlier list had (a lagging server), which were not applied.
	OlderKept uint64 `json:"older_kept"`
}

// PeerStatus is one node as this host sees it.
type PeerStatus struct {
	Node      string `json:"node"`
	ServiceID string `json:"service_id,omitempty"`
	PublicKey string `json:"public_key,omitempty"`
	Endpoint  string `json:"endpoint,omitempty"`
	Prefix    string `json:"prefix,omitempty"`
	Health    string `json:"health,omitempty"`
	State     string `json:"state"`
	Reason    string `json:"reason,omitempty"`
	// Code classifies a rejection's reason (a small fixed set).
	Code string `json:"code,omitempty"`
	// HeldUntil is when a held removal's grace ends.
	HeldUntil *time.Time `json:"held_until,omitempty"`
	// Read from the device when the status is asked for: the latest
	// handshake (absent: never) and the bytes received and sent.
	LatestHandshake *time.Time `json:"latest_handshake,omitempty"`
	RxBytes         int64      `json:"rx_bytes"`
	TxBytes         int64      `json:"tx_bytes"`
}

// Health is what the health verdicts read of the status.
func (st Status) Health() health.Host {
	h := health.Host{
		Node: st.Node, Interface: st.Interface, LinkPresent: st.LinkPresent, Converged: st.Converged,
		NotConvergedSince: st.NotConvergedSince, CatalogReachable: st.Catalog.Reachable,
		LastGoodRead: st.Catalog.LastGoodRead, BreakerHeld: st.Breaker.Held,
		Peers: make([]health.Peer, len(st.Peers)), CredentialExpires: st.CredentialExpires,
	}
	for i, p := range st.Peers {
		h.Peers[i] = health.Peer{Node: p.Node, ServiceID: p.ServiceID, Applied: p.State == PeerApplied,
			Rejected: p.State == PeerRejected, LatestHandshake: p.LatestHandshake}
	}
	return h
}

// Status returns the status after the last reconcile, checked against the
// device as it is now.
func (a *Agent) Status() Status {
	a.mu.Lock()
	st := a.status.st
	// Under the lock: the desired set the source holds is changed in place
	// by the next plan (apply holds the lock then).
	st.Peers = a.status.src.peers()
	a.mu.Unlock()
	st.Differences = slices.Clone(st.Differences)
	st.Catalog = a.catalogStatus()
	if a.opts.Gateway != nil {
		gs := a.opts.Gateway.Status()
		st.Gateway = &gs
	}
	if st.Interface == "" {
		return st // no reconcile yet
	}
	dev, err := netlinkx.ReadDevice(st.Interface)
	if err != nil {
		st.Converged = false
		st.Differences = append(st.Differences, err.Error())
		return st
	}
	st.LinkPresent = true
	live := make(map[string]netlinkx.PeerStats, len(dev.Peers))
	for _, p := range dev.Peers {
		live[p.PublicKey.String()] = p
	}
	known := map[string]bool{}
	for i := range st.Peers {
		p := &st.Peers[i]
		if p.PublicKey == "" || p.State == PeerRejected {
			continue
		}
		known[p.PublicKey] = true
		kp, ok := live[p.PublicKey]
		if !ok {
			if p.State == PeerApplied {
				st.Converged = false
				st.Differences = append(st.Differences, "peer "+p.Node+" ("+p.PublicKey+") is missing from the device")
			}
			continue
		}
		if !kp.LastHandshake.IsZero() {
			hs := kp.LastHandshake
			p.LatestHandshake = &hs
		}
		p.RxBytes, p.TxBytes = kp.RxBytes, kp.TxBytes
		if p.State == PeerApplied && (len(kp.AllowedIPs) != 1 || kp.AllowedIPs[0].String() != p.Prefix) {
			st.Converged = false
			st.Differences = append(st.Differences, fmt.Sprintf("peer %s has allowed IPs %v on the device, want %s", p.Node, kp.AllowedIPs, p.Prefix))
		}
	}
	for k := range live {
		if !known[k] {
			st.Converged = false
			st.Differences = append(st.Differences, "the device has a peer no catalog entry explains: "+k)
		}
	}
	if dev.PublicKey.String() != st.PublicKey {
		st.Converged = false
		st.Differences = append(st.Differences, "the device's public key is "+dev.PublicKey.String())
	}
	return st
}

func (a *Agent) catalogStatus() CatalogStatus {
	w := a.opts.Catalog.State()
	cs := CatalogStatus{Reachable: w.Reachable, LastIndex: w.LastIndex, LastGoodRead: w.LastGoodRead, LastError: w.LastError}
	entries, fromDisk, savedAt := a.view.info()
	cs.Entries = max(entries, 0)
	cs.SnapshotInUse, cs.SnapshotSaved = fromDisk, savedAt
	cs.Hints, cs.HintReads, cs.HintsCarried, cs.HintsApplied, cs.Reads = w.Hints, w.HintReads, w.HintsCarried, w.HintsApplied, w.Reads
	cs.OlderKept, cs.HintRingReads, cs.HintGaps, cs.HintCatchUps = w.OlderKept, w.RingReads, w.Gaps, w.CatchUps
	return cs
}

// statusState is the status of the last reconcile.
type statusState struct {
	st  Status
	src peerSource // makes st's peer list when it is asked for
}

// stats counts the loop's work.
type stats struct {
	reconciles, errors uint64
	seconds            float64
	// notConvergedSince is when the last run of converged reconciles ended.
	notConvergedSince time.Time
}

// count counts one reconcile that started at start.
func (s *stats) count(start time.Time, err error) {
	s.reconciles++
	s.seconds += time.Since(start).Seconds()
	if err != nil {
		s.errors++
	}
}

// peerSource is what a status's peer list is made from: kept as it is at
// every reconcile, and turned into strings only when a status is asked for
// (with 10,000 peers that is most of a reconcile's work otherwise).
type peerSource struct {
	res result
	err error
}

// peers builds the status's peer list.
func (src peerSource) peers() []PeerStatus {
	res, err := src.res, src.err
	out := make([]PeerStatus, 0, len(res.Desired)+len(res.Rejected)+len(res.Plan.Held))
	// After a successful apply the kernel holds the plan's upserts, so a
	// desired peer is pending only if the apply failed.
	upserted := map[wgtypes.Key]bool{}
	for _, p := range res.Plan.Upsert {
		upserted[p.PublicKey] = true
	}
	for _, p := range res.Desired {
		state := PeerApplied
		if err != nil && upserted[p.PublicKey] {
			state = PeerPending
		}
		out = append(out, PeerStatus{
			Node: p.Node, PublicKey: p.PublicKey.String(), Endpoint: p.Endpoint.String(),
			Prefix: p.Prefix.String(), Health: p.Health, State: state,
		})
	}
	for _, r := range res.Rejected {
		out = append(out, PeerStatus{Node: r.Node, ServiceID: r.ServiceID, State: PeerRejected, Reason: r.Reason, Code: r.Code})
	}
	for _, h := range res.Plan.Held {
		until := h.Until
		ps := PeerStatus{PublicKey: h.PublicKey.String(), State: PeerHeld, HeldUntil: &until,
			Reason: "gone from the catalog; removal grace until " + until.UTC().Format(time.RFC3339)}
		if h.Breaker {
			ps.HeldUntil = nil
			ps.Reason = "gone from the catalog; held by the mass-removal circuit breaker (meshd release-removals)"
		}
		if p, ok := res.heldPrefix[h.PublicKey]; ok {
			ps.Prefix = p.String()
		}
		out = append(out, ps)
	}
	slices.SortFunc(out, func(x, y PeerStatus) int {
		return cmp.Or(strings.Compare(x.Node, y.Node), strings.Compare(x.PublicKey, y.PublicKey))
	})
	return out
}

func (a *Agent) setStatus(snap *catalogsync.Snapshot, res result, err error, now time.Time) {
	reg := a.opts.Registration
	st := Status{
		Node:             reg.Node,
		Interface:        a.opts.Link.Name(),
		Mode:             string(a.opts.Link.Mode()),
		PublicKey:        reg.PublicKey.String(),
		ListenPort:       a.opts.ListenPort,
		MeshAddress:      a.opts.Prefix.Addr().Next().String(),
		Prefix:           a.opts.Prefix.String(),
		LastReconcile:    now,
		KernelWrites:     a.opts.Link.Writes(),
		Registrations:    a.reg.count,
		Reconciles:       a.stats.reconciles,
		ReconcileErrors:  a.stats.errors,
		ReconcileSeconds: a.stats.seconds,
	}
	if err != nil {
		st.LastError = err.Error()
	}
	st.Revoked = len(a.revoked.set.Nodes) + len(a.revoked.set.Identities)
	st.EntriesParsed = a.planner.Parses()
	st.Withdrawals.Verified, st.Withdrawals.Refused = a.planner.Withdrawals()
	if reg.Signer != nil {
		st.CredentialExpires = reg.Signer.Parsed().NotAfter
	}
	st.InvalidRevocations = a.revoked.invalid
	if a.reg.rewritten > 0 || len(a.reg.foreign) > 0 {
		st.Impersonation = &Impersonation{Rewritten: a.reg.rewritten, Others: slices.Clone(a.reg.foreign)}
	}
	st.Breaker = Breaker{Tripped: res.Plan.Breaker, Pending: res.Plan.Pending, Released: a.planner.Released()}
	for _, h := range res.Plan.Held {
		if h.Breaker {
			st.Breaker.Held++
		}
	}
	_, fromDisk, _ := a.view.info()
	st.Converged = err == nil && snap != nil && !fromDisk && st.Breaker.Held == 0
	switch {
	case snap == nil:
		st.Differences = append(st.Differences, "no catalog read yet")
	case fromDisk:
		st.Differences = append(st.Differences, "desired state comes from the saved snapshot: the catalog has not answered since start")
	}
	if st.Breaker.Held > 0 {
		st.Differences = append(st.Differences, fmt.Sprintf("%d removals held by the circuit breaker", st.Breaker.Held))
	}
	if err != nil {
		st.Differences = append(st.Differences, "last reconcile failed: "+err.Error())
	}
	if st.Converged {
		a.stats.notConvergedSince = time.Time{}
	} else {
		if a.stats.notConvergedSince.IsZero() {
			a.stats.notConvergedSince = now
		}
		since := a.stats.notConvergedSince
		st.NotConvergedSince = &since
	}
	a.mu.Lock()
	a.status.st = st // its peer source was set by apply
	a.mu.Unlock()
}

// Withdrawals counts signed withdrawals by result.
type Withdrawals struct {
	Verified uint64 `json:"verified"`
	Refused  uint64 `json:"refused"`
}
