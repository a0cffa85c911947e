package gateway

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/handshake"
	"meshd.dev/meshd/peers"
)

// Just-in-time user peers (Options.JIT): the user link holds only the
// peers that handshook within IdleTimeout. Every valid record is known
// (by public key), but a peer goes into the kernel only when an
// initiation from its key arrives (Sniff sees it beside the device, which
// drops it), and leaves it after IdleTimeout without a handshake; its
// record stays.

// Defaults of the JIT options.
const (
	DefaultIdleTimeout = 10 * time.Minute
	// kickWindow is how long a freshly installed peer carries the
	// initiation's source as its endpoint and a persistent keepalive:
	// setting the keepalive makes the device send one at once, that is, a
	// handshake initiation back to the user, so that the user's first
	// attempt completes (the user's own initiation was dropped). After the
	// window both are taken off again; the user roams and keeps its own
	// keepalive.
	kickWindow = 3 * time.Second
	// kickDelay is how long the gateway waits before it kicks: the
	// device may still hold the user's initiation in its queue and answer
	// it once the peer is in (the user's handshake then completes by
	// itself). Kicking then as well would make the two handshakes cross,
	// which can cost the user WireGuard's rekey timeouts. The peer goes in
	// at once with the initiation's source as its endpoint; only a peer
	// that has not handshaken after kickDelay is kicked.
	kickDelay = 150 * time.Millisecond
	// perSourceRate and perSourceBurst bound the initiations read per
	// source address (a second each, then the rest are dropped unread);
	// totalRate bounds all of them: a flood costs at most totalRate
	// decryptions a second.
	perSourceRate  = 5
	perSourceBurst = 10
	totalRate      = 2000
	// maxSources bounds the per-source buckets kept (a flood from spoofed
	// addresses would grow them): past it, new sources share the total.
	maxSources = 65536
)

// Reasons an initiation installs nothing (Status.JIT.Refused, the
// metric meshd_gateway_initiations_refused_total).
const (
	RefusedRateLimited = "rate_limited"
	RefusedMAC1        = "bad_mac1"
	RefusedDecrypt     = "undecryptable"
	RefusedUnknownKey  = "unknown_key"
	RefusedReplay      = "replay"
)

// JITStatus is the just-in-time state in `meshd status`.
type JITStatus struct {
	IdleTimeout string `json:"idle_timeout"`
	// Watching is true while the packet socket that sees initiations is
	// open: without it, users whose peer is not in the kernel cannot
	// connect.
	Watching bool `json:"watching"`
	// Records is how many valid, unexpired records the gateway knows;
	// Active how many of them the kernel holds.
	Records int `json:"records"`
	Active  int `json:"active"`
	// Installs and Evictions count peers put in for an initiation and
	// taken out for being idle.
	Installs  uint64 `json:"installs"`
	Evictions uint64 `json:"evictions"`
	// Refused counts initiations that installed nothing, by reason.
	Refused map[string]uint64 `json:"refused,omitempty"`
}

// activePeer is a user peer the kernel holds (or is about to).
type activePeer struct {
	since     time.Time      // installed
	seen      time.Time      // when it was last heard from: a handshake or bytes received
	rx        int64          // bytes received, at the last check
	endpoint  netip.AddrPort // where its initiation came from
	kickAt    time.Time      // kick from then, unless it handshook
	kickUntil time.Time      // endpoint and kick off from then
	handshook bool           // handshook since it was installed
}

// jit is a runner's just-in-time state, guarded by Runner.mu.
type jit struct {
	idle      time.Duration
	responder *handshake.Responder
	limit     limiter
	// records are the valid, unexpired records by key, as the last
	// reconcile found them.
	records map[wgtypes.Key]Stored
	ids     map[string]wgtypes.Key // record ID -> its key in records
	// pending are the records hints brought since the records' version a
	// reconcile's Desire was computed from: sync takes them in again.
	pending []pendingRecord
	gw      string
	pool    netip.Prefix
	super   netip.Prefix
	active  map[wgtypes.Key]*activePeer
	// last is the newest initiation timestamp read per known key.
	last      map[wgtypes.Key]handshake.Timestamp
	nextCheck time.Time // the next idle check
	adopted   bool      // the kernel's peers were looked at once
	status    JITStatus
}

func newJIT(priv wgtypes.Key, idle time.Duration, gw string, pool, supernet netip.Prefix) (*jit, error) {
	r, err := handshake.NewResponder(priv)
	if err != nil {
		return nil, err
	}
	return &jit{idle: idle, gw: gw, pool: pool, super: supernet, responder: r, limit: limiter{per: map[netip.Addr]*bucket{}},
		records: map[wgtypes.Key]Stored{}, ids: map[string]wgtypes.Key{},
		active: map[wgtypes.Key]*activePeer{}, last: map[wgtypes.Key]handshake.Timestamp{},
		status: JITStatus{IdleTimeout: idle.String(), Refused: map[string]uint64{}}}, nil
}

// initiation judges one initiation seen at now and reports whether it
// activated a peer. The caller holds the lock (the decryption runs under
// it: the rate limit bounds how often).
func (j *jit) initiation(p handshake.Packet, now time.Time) bool {
	if !j.limit.allow(p.Source.Addr(), now) {
		j.status.Refused[RefusedRateLimited]++
		return false
	}
	// Unknown, removed or expired keys: one decryption (the static key's),
	// and nothing kept.
	known := func(k [32]byte) bool {
		rec, ok := j.records[wgtypes.Key(k)]
		return ok && !rec.Expired(now)
	}
	in, err := j.responder.ConsumeIf(p.Payload, known)
	switch {
	case errors.Is(err, handshake.ErrMAC1), errors.Is(err, handshake.ErrNotInitiation):
		j.status.Refused[RefusedMAC1]++
		return false
	case errors.Is(err, handshake.ErrNotWanted):
		j.status.Refused[RefusedUnknownKey]++
		return false
	case err != nil:
		j.status.Refused[RefusedDecrypt]++
		return false
	}
	key := wgtypes.Key(in.Static)
	if last, ok := j.last[key]; ok && !in.Timestamp.After(last) {
		j.status.Refused[RefusedReplay]++
		return false
	}
	j.last[key] = in.Timestamp
	if a, ok := j.active[key]; ok {
		a.seen = now
		return false // the device holds it and answers itself
	}
	j.active[key] = &activePeer{since: now, seen: now, endpoint: p.Source, kickAt: now.Add(kickDelay), kickUntil: now.Add(kickDelay + kickWindow)}
	j.status.Installs++
	return true
}

// pendingRecord is one record as a hint's read found it, at the records'
// version it made.
type pendingRecord struct {
	version uint64
	id      string
	pair    Pair
	ok      bool
}

// provisional takes one record as a hint's read found it (ok false: gone),
// the records being at version after it, until a reconcile decides with
// every record (sync): a valid, unexpired one is known at once, a gone one
// forgotten.
func (j *jit) provisional(id string, p Pair, ok bool, version uint64) {
	j.pending = append(j.pending, pendingRecord{version, id, p, ok})
	j.take(id, p, ok)
}

func (j *jit) take(id string, p Pair, ok bool) {
	gw, pool, supernet := j.gw, j.pool, j.super
	if k, had := j.ids[id]; had {
		delete(j.records, k)
		delete(j.ids, id)
	}
	j.status.Records = len(j.records)
	if !ok {
		return
	}
	rec, err := Decode(gw, p.Key, p.Value)
	if err == nil {
		err = checkRecord(rec, pool, supernet)
	}
	if err != nil || rec.Expired(time.Now()) {
		return
	}
	if _, taken := j.records[rec.Key()]; !taken {
		j.records[rec.Key()] = Stored{Record: rec, ModifyIndex: p.ModifyIndex}
		j.ids[id] = rec.Key()
	}
	j.status.Records = len(j.records)
}

// sync takes the records of a Desire computed from the records at
// version (and the hints read since): active peers whose record is gone
// (removed, expired, rejected, or its key changed) leave the active set.
func (j *jit) sync(recs []Stored, version uint64) {
	j.records = make(map[wgtypes.Key]Stored, len(recs))
	j.ids = make(map[string]wgtypes.Key, len(recs))
	for _, s := range recs {
		j.records[s.Key()] = s
		j.ids[s.ID()] = s.Key()
	}
	kept := j.pending[:0]
	for _, p := range j.pending {
		if p.version > version {
			j.take(p.id, p.pair, p.ok)
			kept = append(kept, p)
		}
	}
	j.pending = kept
	for k := range j.active {
		if _, ok := j.records[k]; !ok {
			delete(j.active, k)
		}
	}
	for k := range j.last {
		if _, ok := j.records[k]; !ok {
			delete(j.last, k)
		}
	}
	j.status.Records = len(j.records)
}

// kickDue reports whether a peer waits for its kick at now: the device's
// handshakes must be read first (noteHandshakes).
func (j *jit) kickDue(now time.Time) bool {
	for _, a := range j.active {
		if a.endpoint.IsValid() && !a.handshook && !now.Before(a.kickAt) && now.Before(a.kickUntil) {
			return true
		}
	}
	return false
}

// noteHandshakes marks the active peers that handshook since they were
// installed.
func (j *jit) noteHandshakes(dev map[wgtypes.Key]heard) {
	for k, a := range j.active {
		if h, ok := dev[k]; ok && h.handshake.After(a.since) {
			a.handshook = true
		}
	}
}

// heard is what the device reports of a peer: its last handshake and the
// bytes received from it.
type heard struct {
	handshake time.Time
	rx        int64
}

// idleCheck takes the device's report at now: a peer heard from (a
// handshake, or any bytes received: keepalives included) is not idle;
// peers idle for the timeout are evicted. On the first check, peers the
// kernel already holds that handshook within the timeout (meshd
// restarted) are kept active. It returns when to check again.
func (j *jit) idleCheck(dev map[wgtypes.Key]heard, now time.Time) time.Time {
	if !j.adopted {
		j.adopted = true
		for k, h := range dev {
			if _, ok := j.records[k]; ok && !h.handshake.IsZero() && now.Sub(h.handshake) < j.idle {
				if _, ok := j.active[k]; !ok {
					j.active[k] = &activePeer{since: h.handshake, seen: h.handshake, rx: h.rx}
				}
			}
		}
	}
	for k, a := range j.active {
		h, ok := dev[k]
		if ok && h.handshake.After(a.seen) {
			a.seen = h.handshake
		}
		if ok && h.rx != a.rx {
			a.seen, a.rx = now, h.rx
		}
		if now.Sub(a.seen) >= j.idle && now.Sub(a.since) >= j.idle {
			delete(j.active, k)
			j.status.Evictions++
		}
	}
	j.nextCheck = now.Add(max(j.idle/10, time.Second))
	return j.nextCheck
}

// state is the desired state of the user link: the active peers whose
// records are known and unexpired (an active peer whose record went or
// expired leaves the active set), the fresh ones kicked (kickWindow), in
// record ID order. It returns when to look again: the end of a kick or an
// active record's expiry. It costs O(active), whatever the number of
// records.
func (j *jit) state(now time.Time) (State, time.Time) {
	var (
		st   State
		wake time.Time
	)
	for k, a := range j.active {
		s, ok := j.records[k]
		if !ok || s.Expired(now) {
			delete(j.active, k)
			continue
		}
		p := peers.Peer{Node: s.ID(), PublicKey: k, Prefix: netip.PrefixFrom(s.Address, 128)}
		if now.Before(a.kickUntil) && a.endpoint.IsValid() {
			p.Endpoint = a.endpoint
			wake = earliest(wake, a.kickUntil)
			switch {
			case a.handshook:
			case now.Before(a.kickAt):
				wake = earliest(wake, a.kickAt)
			default:
				p.Keepalive = UserKeepalive
			}
		}
		if s.Expires != nil {
			wake = earliest(wake, *s.Expires)
		}
		st.Records, st.Peers = append(st.Records, s), append(st.Peers, p)
	}
	slices.SortFunc(st.Records, func(a, b Stored) int { return strings.Compare(a.ID(), b.ID()) })
	slices.SortFunc(st.Peers, func(a, b peers.Peer) int { return strings.Compare(a.Node, b.Node) })
	j.status.Active = len(st.Peers)
	return st, wake
}

// limiter is a token bucket per source address and one for all.
type limiter struct {
	mu    sync.Mutex
	per   map[netip.Addr]*bucket
	total bucket
	swept time.Time
}

type bucket struct {
	tokens float64
	at     time.Time
}

func (b *bucket) take(now time.Time, rate, burst float64) bool {
	if b.at.IsZero() {
		b.tokens = burst
	} else {
		b.tokens = min(burst, b.tokens+now.Sub(b.at).Seconds()*rate)
	}
	b.at = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

func (l *limiter) allow(src netip.Addr, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.swept) > time.Minute {
		// Full buckets need not be kept: a fresh one is the same.
		for a, b := range l.per {
			if now.Sub(b.at) > perSourceBurst*time.Second/perSourceRate {
				delete(l.per, a)
			}
		}
		l.swept = now
	}
	b, ok := l.per[src]
	if !ok {
		if len(l.per) >= maxSources {
			return l.total.take(now, totalRate, totalRate)
		}
		b = &bucket{}
		l.per[src] = b
	}
	return b.take(now, perSourceRate, perSourceBurst) && l.total.take(now, totalRate, totalRate)
}
