package gateway

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/catalogsync"
	"meshd.dev/meshd/firewall"
	"meshd.dev/meshd/handshake"
	"meshd.dev/meshd/internal/loop"
	"meshd.dev/meshd/netlinkx"
	"meshd.dev/meshd/peers"
)

// ForwardingSysctl is the switch a gateway turns on: IPv6 forwarding
// between its user link and its mesh link.
const ForwardingSysctl = "/proc/sys/net/ipv6/conf/all/forwarding"

// Options configure a Runner.
type Options struct {
	// Node is the gateway's node name: it watches only its own folder.
	Node string
	// Prefix is the gateway's host prefix, and Pool its user pool in it.
	Prefix   netip.Prefix
	Pool     netip.Prefix
	Supernet netip.Prefix
	// Link is the user link (no address: users' addresses are routed to it
	// one /128 each).
	Link *netlinkx.Link
	// MeshInterface is the node's mesh link: forwarding into it is allowed
	// only from the user link (firewall.Ruleset.MeshInterface).
	MeshInterface string
	Firewall      *firewall.Table
	Consul        *api.Client
	// Datacenter is passed to the watch.
	Datacenter     string
	ResyncInterval time.Duration
	// FullReadInterval is how often the whole records folder is read
	// (default DefaultFullReadInterval); changes come as hints between.
	FullReadInterval time.Duration
	// SavedPath is where the records last read are kept, and applied from
	// at start until Consul answers; empty: nothing is saved, and until
	// Consul answers the kernel stays as it was.
	SavedPath string
	// JIT puts a user peer in the kernel only when its handshake arrives
	// and takes it out after IdleTimeout without one (jit.go); ListenPort
	// is the user link's port, where initiations are watched for.
	JIT         bool
	IdleTimeout time.Duration
	ListenPort  int
	Logger      *slog.Logger
}

// Status is what the gateway reports in `meshd status`.
type Status struct {
	Interface string `json:"interface"`
	// Synced is false until the peers folder was read once; until then
	// the kernel is left as it was.
	Synced bool `json:"synced"`
	Peers  int  `json:"peers"`
	// Rejected are the first MaxStatusRejections rejected records (by
	// key), and RejectedCount how many there are.
	Rejected      []Rejection `json:"rejected,omitempty"`
	RejectedCount int         `json:"rejected_count"`
	// Writes counts kernel writes to the user link and the firewall.
	Writes    uint64 `json:"writes"`
	LastError string `json:"last_error,omitempty"`
	// FullReads and RecordReads count reads of every record (at start,
	// now and then, and after missed hints) and of single records (one
	// per change hint).
	// Revalidations count reads of active peers' records every resync.
	FullReads     uint64 `json:"full_reads"`
	RecordReads   uint64 `json:"record_reads"`
	Revalidations uint64 `json:"revalidations"`
	// JIT is the just-in-time state, when on.
	JIT *JITStatus `json:"jit,omitempty"`
}

// MaxStatusRejections bounds the rejected records status lists (`meshd
// gateway peer list` shows them all).
const MaxStatusRejections = 100

// Runner keeps a gateway's user link, routes and firewall in line with its
// peer records, and deletes expired records.
type Runner struct {
	opts    Options
	watcher *catalogsync.Watcher
	decoder *Decoder // owned by the loop
	// applied is what the user link holds as far as meshd knows: what the
	// last successful reconcile left. A change from the watch is diffed
	// against it, without reading a device of thousands of peers; the
	// kernel itself is read at start, every ResyncInterval and after any
	// failure (applied is then nil). Owned by the loop.
	applied *peers.Observed

	mu sync.Mutex
	// records are the records as last read (follow.go).
	records *recordSet
	// fullReads and recordReads count reads of the whole folder and of
	// single records; savedAt is the last save of the records.
	fullReads, recordReads, revalidations uint64
	savedAt                               time.Time
	// others are the other gateways' host prefixes (SetGateways).
	others []netip.Prefix
	loop   *loop.Loop // set by Run
	synced bool
	// firewallBroken is set by watchFirewall when the table was changed
	// behind meshd's back; the loop then rebuilds it.
	firewallBroken atomic.Bool
	// fromDisk is set while pairs are the saved ones: nothing is deleted
	// in Consul from them (it is not answering, and they may be old).
	fromDisk bool
	status   Status
	// jit is the just-in-time state (Options.JIT), else nil.
	jit *jit
	// desired is the last desired state and the records' version it was
	// computed from. Owned by the loop.
	desired desiredCache
}

type desiredCache struct {
	valid   bool
	version uint64
	at      time.Time
	st      State
}

// NewRunner returns a runner; Run starts it.
func NewRunner(opts Options) (*Runner, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	opts.Logger = opts.Logger.With("link", opts.Link.Name())
	r := &Runner{
		opts:    opts,
		watcher: &catalogsync.Watcher{Client: opts.Consul, Datacenter: opts.Datacenter, Logger: opts.Logger},
		decoder: NewDecoder(opts.Node),
		records: newRecordSet(),
		status:  Status{Interface: opts.Link.Name()},
	}
	if opts.JIT {
		j, err := newJIT(opts.Link.PrivateKey(), cmp.Or(opts.IdleTimeout, DefaultIdleTimeout), opts.Node, opts.Pool, opts.Supernet)
		if err != nil {
			return nil, err
		}
		r.jit = j
	}
	return r, nil
}

// SetGateways tells the runner which host prefixes belong to the other
// gateways of the mesh (verified hosts whose credential has the gateway
// role); its users reach them only where an allow list names them, and
// nothing from them is forwarded to its users. A change is applied at the
// next reconcile, which it asks for.
func (r *Runner) SetGateways(prefixes []netip.Prefix) {
	prefixes = slices.Clone(prefixes)
	slices.SortFunc(prefixes, netip.Prefix.Compare)
	prefixes = slices.Compact(prefixes)
	r.mu.Lock()
	changed := !slices.Equal(r.others, prefixes)
	r.others = prefixes
	l := r.loop
	r.mu.Unlock()
	if changed && l != nil {
		l.Mark()
	}
}

// Status returns the runner's current status.
func (r *Runner) Status() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.status
	s.Writes = r.opts.Link.Writes() + r.opts.Firewall.Writes()
	s.FullReads, s.RecordReads, s.Revalidations = r.fullReads, r.recordReads, r.revalidations
	if r.jit != nil {
		js := r.jit.status
		js.Refused = maps.Clone(js.Refused)
		s.JIT = &js
	}
	return s
}

// Run keeps the user link converged until ctx is done. The link and its
// peers outlive it (a restart drops no user's traffic); Remove takes them
// down.
func (r *Runner) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	l := &loop.Loop{
		Reconcile: func(ctx context.Context) (time.Time, error) { return r.reconcile(ctx, time.Now()) },
		Resync:    r.opts.ResyncInterval,
		OnResync:  func() { r.applied = nil }, // read the kernel this time
	}
	r.mu.Lock()
	r.loop = l
	r.mu.Unlock()
	r.loadSaved()
	wg.Go(func() { r.followRecords(ctx, l) })
	wg.Go(func() { r.watchFirewall(ctx, l) })
	if r.jit != nil {
		wg.Go(func() { r.sniff(ctx, l) })
		wg.Go(func() { r.revalidate(ctx, l) })
	}
	if err := enableForwarding(); err != nil {
		r.opts.Logger.Error("gateway cannot forward", "err", err)
	}
	return l.Run(ctx)
}

// FirewallCheck is how often the gateway checks that its nftables table
// is still as it wrote it: an `nft flush ruleset` would leave users
// unfiltered until the next resync.
const FirewallCheck = 2 * time.Second

// watchFirewall checks the table every FirewallCheck and, when someone
// changed or removed it, has the loop rebuild it at once.
func (r *Runner) watchFirewall(ctx context.Context, l *loop.Loop) {
	t := time.NewTicker(FirewallCheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ok, err := r.opts.Firewall.Intact()
		if err != nil {
			r.opts.Logger.Warn("cannot check the firewall table", "err", err)
			continue
		}
		if !ok {
			r.opts.Logger.Warn("meshd's nftables table was changed or removed behind its back; rebuilding it")
			r.firewallBroken.Store(true)
			l.Mark()
		}
	}
}

// sniff hands the initiations arriving at the user link's port to the
// JIT state, and has the loop install a peer when one activates it. A
// failing packet socket is retried after a pause: until then users whose
// peer is not in the kernel cannot connect, which status shows.
func (r *Runner) sniff(ctx context.Context, l *loop.Loop) {
	for ctx.Err() == nil {
		watching := func(on bool) {
			r.mu.Lock()
			r.jit.status.Watching = on
			r.mu.Unlock()
		}
		err := handshake.Sniff(ctx, uint16(r.opts.ListenPort), func() { watching(true) }, func(p handshake.Packet) {
			r.mu.Lock()
			activated := r.jit.initiation(p, time.Now())
			r.mu.Unlock()
			if activated {
				r.opts.Logger.Debug("user peer activated by its handshake", "from", p.Source)
				l.Mark()
			}
		})
		watching(false)
		if err == nil || ctx.Err() != nil {
			return
		}
		r.opts.Logger.Error("cannot watch the user link's port for handshakes; users not in the kernel cannot connect", "err", err)
		r.setStatus(func(s *Status) { s.LastError = errString(err) })
		select {
		case <-ctx.Done():
		case <-time.After(5 * time.Second):
		}
	}
}

// desireSpacing is, with JIT, the least time between two computations of
// the whole desired state (Desire: expiry deletions, conflicts, rejected
// records), which cost O(records): the active set takes each record as a
// hint brings it (jit.provisional), so a user never waits for it.
const desireSpacing = 10 * time.Second

// reconcile applies the records once and returns when to look again (the
// next expiry), or zero, and what failed.
func (r *Runner) reconcile(ctx context.Context, now time.Time) (time.Time, error) {
	r.mu.Lock()
	synced, fromDisk, version := r.synced, r.fromDisk, r.records.version
	d := r.desired
	expiryPassed := d.valid && !d.st.NextExpiry.IsZero() && !now.Before(d.st.NextExpiry)
	fresh := d.valid && d.version == version && !expiryPassed
	// Desire again when the records changed (with JIT: at most every
	// desireSpacing) or a record expired.
	due := !fresh && (r.jit == nil || !d.valid || expiryPassed || now.Sub(d.at) >= desireSpacing)
	var pairs []Pair
	if due {
		pairs = r.records.slice()
	}
	r.mu.Unlock()
	if !synced {
		// Nothing read yet (Consul is slow or down): keep what the kernel
		// has; users keep their access.
		err := r.opts.Link.Ensure()
		r.setStatus(func(s *Status) { s.LastError = errString(err) })
		return time.Time{}, err
	}
	st := d.st
	if due {
		st = Desire(r.decoder, pairs, r.opts.Pool, r.opts.Supernet, now)
		kept := st
		if r.jit != nil {
			// The active set keeps the records it needs (sync, below);
			// the cache keeps what the next reconciles read of it.
			kept = State{Expired: st.Expired, Rejected: st.Rejected, NextExpiry: st.NextExpiry}
		}
		r.desired = desiredCache{valid: true, version: version, at: now, st: kept}
	}
	wake := st.NextExpiry
	if !fresh && !due {
		wake = earliest(wake, d.at.Add(desireSpacing))
	}
	if r.jit != nil {
		jst, next, err := r.jitState(st, due, version, now)
		if err != nil {
			r.setStatus(func(s *Status) { s.LastError = errString(err) })
			return time.Time{}, err
		}
		st, wake = jst, earliest(wake, next)
	}
	if r.firewallBroken.Swap(false) {
		r.opts.Firewall.Forget()
	}
	var errs []error
	// The firewall first: a new or narrowed policy holds before the peer
	// it is for can send; a removed peer's traffic is dropped either way.
	r.mu.Lock()
	others := r.others
	r.mu.Unlock()
	scope := Scope{Pool: r.opts.Pool, Own: r.opts.Prefix, Others: others}
	if err := r.opts.Firewall.Apply(scope.Ruleset(r.opts.Link.Name(), r.opts.MeshInterface, st.Records)); err != nil {
		errs = append(errs, err)
	}
	obs, err := r.observe()
	if err != nil {
		errs = append(errs, err)
	} else {
		// User peers go as soon as their record does: removal and expiry
		// are the point, and no grace or breaker applies.
		plan := peers.Diff(st.Peers, obs, peers.Removal{Now: now})
		if !plan.Empty() {
			errs = append(errs, r.opts.Link.Apply(plan))
		}
		obs = peers.Applied(obs, plan)
	}
	r.applied = nil
	if errors.Join(errs...) == nil {
		r.applied = &obs
	}
	for _, s := range st.Expired {
		if fromDisk {
			break // deleted once Consul answers
		}
		if err := Delete(ctx, r.opts.Consul, r.opts.Node, s); errors.Is(err, ErrNotAnnounced) {
			// This gateway holds the change already (its next read of the
			// record or the folder shows it gone).
			r.opts.Logger.Warn("deleted an expired peer without a hint", "peer", s.ID(), "err", err)
		} else if err != nil {
			errs = append(errs, fmt.Errorf("delete expired peer %s: %w", s.ID(), err))
			continue
		}
		r.mu.Lock()
		r.records.drop(RecordKey(r.opts.Node, s.Org, s.Name))
		r.mu.Unlock()
		r.opts.Logger.Info("deleted expired peer", "peer", s.ID(), "address", s.Address, "expired", s.Expires)
	}
	for _, rej := range st.Rejected {
		r.opts.Logger.Debug("rejected peer record", "key", rej.Key, "reason", rej.Reason)
	}
	err = errors.Join(errs...)
	r.setStatus(func(s *Status) {
		s.Synced, s.Peers, s.LastError = !fromDisk, len(st.Peers), errString(err)
		s.Rejected, s.RejectedCount = st.Rejected[:min(len(st.Rejected), MaxStatusRejections)], len(st.Rejected)
	})
	if err != nil {
		r.opts.Logger.Error("gateway reconcile failed; retrying after a backoff", "err", err)
	}
	return wake, err
}

// jitState is the desired state with JIT (jit.go): it takes the records
// of a new Desire (when desired: all, from the records at version) in, checks for idle peers
// when due, and returns the active peers' state (with all's expired
// records, for deletion, and its rejections) and when to reconcile again
// (the end of a kick, an active record's expiry, or the next idle check).
func (r *Runner) jitState(all State, desired bool, version uint64, now time.Time) (State, time.Time, error) {
	r.mu.Lock()
	if desired {
		r.jit.sync(all.Records, version)
	}
	due := !now.Before(r.jit.nextCheck)
	kick := r.jit.kickDue(now)
	r.mu.Unlock()
	if due || kick {
		hs, err := r.handshakes()
		if err != nil {
			return State{}, time.Time{}, err
		}
		r.mu.Lock()
		r.jit.noteHandshakes(hs)
		if due {
			r.jit.idleCheck(hs, now)
		}
		r.mu.Unlock()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	st, wake := r.jit.state(now)
	st.Rejected = all.Rejected
	if desired {
		st.Expired = all.Expired
	}
	return st, earliest(wake, r.jit.nextCheck), nil
}

// handshakes reads the user link's peers' last handshakes and bytes
// received.
func (r *Runner) handshakes() (map[wgtypes.Key]heard, error) {
	if err := r.opts.Link.Ensure(); err != nil {
		return nil, err
	}
	ds, err := netlinkx.ReadDevice(r.opts.Link.Name())
	if err != nil {
		return nil, err
	}
	hs := make(map[wgtypes.Key]heard, len(ds.Peers))
	for _, p := range ds.Peers {
		hs[p.PublicKey] = heard{handshake: p.LastHandshake, rx: p.RxBytes}
	}
	return hs, nil
}

// earliest is the earlier of two wake times, zero meaning none.
func earliest(a, b time.Time) time.Time {
	if a.IsZero() || !b.IsZero() && b.Before(a) {
		return b
	}
	return a
}

// loadSaved takes the records saved before a restart, until Consul
// answers.
func (r *Runner) loadSaved() {
	if r.opts.SavedPath == "" {
		return
	}
	saved, err := loadSaved(r.opts.SavedPath)
	switch {
	case err != nil:
		r.opts.Logger.Error("ignoring unreadable saved gateway records; the user link stays as it is until Consul answers", "err", err)
	case saved != nil:
		r.mu.Lock()
		r.records.list(saved, 0) // any read from Consul is newer
		r.synced, r.fromDisk = true, true
		r.mu.Unlock()
		r.opts.Logger.Info("applying saved gateway records until Consul answers", "records", len(saved))
	}
}

// observe returns what the user link holds: read from the kernel (after
// making sure the link is there) when a full reconcile is due, else what
// the last reconcile left.
func (r *Runner) observe() (peers.Observed, error) {
	if r.applied != nil {
		return *r.applied, nil
	}
	if err := r.opts.Link.Ensure(); err != nil {
		return peers.Observed{}, err
	}
	return r.opts.Link.Observe()
}

func (r *Runner) setStatus(f func(*Status)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f(&r.status)
}

// Remove takes the gateway's user link, its routes and its firewall table
// down (when the node leaves the mesh).
func (r *Runner) Remove() error {
	return errors.Join(r.opts.Link.Remove(), r.opts.Firewall.Remove())
}

// errString is err on one line: joined errors are separated by "; ".
func errString(err error) string {
	if err == nil {
		return ""
	}
	return strings.ReplaceAll(err.Error(), "\n", "; ")
}

// enableForwarding turns IPv6 forwarding on, if it is not on already.
func enableForwarding() error {
	b, err := os.ReadFile(ForwardingSysctl)
	if err != nil {
		return fmt.Errorf("read %s: %w", ForwardingSysctl, err)
	}
	if strings.TrimSpace(string(b)) == "1" {
		return nil
	}
	if err := os.WriteFile(ForwardingSysctl, []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("enable IPv6 forwarding: %w", err)
	}
	return nil
}
