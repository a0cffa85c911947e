package peers

import (
	"cmp"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/trust"
)

// Meta keys of a node's service instance (DESIGN.md "Data model").
const (
	MetaVersion   = "v"
	MetaNode      = "node"
	MetaPublicKey = "public_key"
	MetaEndpoint  = "endpoint"
	MetaPrefix    = "prefix"
	MetaKeepalive = "keepalive"

	// SchemaVersion is the only Meta schema this meshd understands.
	SchemaVersion = "1"

	// MaxMetaValue and MaxMetaKeys are Consul's own limits; an entry beyond
	// them did not come from a well-behaved meshd.
	MaxMetaValue = 512
	MaxMetaKeys  = 64
	// MaxTags bounds an entry's tags (each at most MaxMetaValue long):
	// meshd uses one, a role.
	MaxTags = 64
)

// Health of an entry, as the catalog reports its checks (worst wins).
const (
	HealthPassing  = "passing"
	HealthWarning  = "warning"
	HealthCritical = "critical"
)

// Entry is one instance of the meshd service as read from the catalog,
// before any validation.
type Entry struct {
	ServiceID   string
	Meta        map[string]string
	Tags        []string
	CreateIndex uint64
	// ModifyIndex changes with every write to the instance (0 when
	// unknown): an entry whose ModifyIndex is unchanged is unchanged, but
	// for Health, which comes from the checks.
	ModifyIndex uint64
	Health      string
	// Withdrawal, when set, is the host's own signed word that it left
	// the mesh, brought by the delta path before the whole list shows the
	// entry gone (Planner drops an entry whose withdrawal verifies).
	Withdrawal *Withdrawal
}

// Withdrawal is a host's withdrawal of its node: a serial above every
// serial its entries had, and its identity's signature of the two
// (trust.WithdrawalBytes).
type Withdrawal struct {
	Serial    uint64
	Signature []byte
}

// Peer is a validated node entry: what the kernel needs to reach that node.
type Peer struct {
	Node        string
	PublicKey   wgtypes.Key
	Endpoint    netip.AddrPort
	Prefix      netip.Prefix
	Keepalive   time.Duration
	Tags        []string
	Health      string
	CreateIndex uint64

	// What the entry's trust proved (Rules.Trust): the signed serial, the
	// credential's expiry, identity and roles. Zero without Rules.Trust.
	Serial   uint64
	NotAfter time.Time
	Identity [32]byte
	Roles    []string
}

// Rules bound what an entry may claim.
type Rules struct {
	// Supernet contains every node prefix.
	Supernet netip.Prefix
	// MinBits and MaxBits bound a node prefix's length. Zero values mean
	// Supernet.Bits()+1 and 120.
	MinBits, MaxBits int
	// Trust is what an entry must prove. The agent and every command that
	// uses entries set it; nil (pure tests of the planning alone) takes
	// entries unsigned.
	Trust *Trust
}

func (r Rules) bounds() (lo, hi int) {
	lo, hi = r.MinBits, r.MaxBits
	if lo == 0 {
		lo = r.Supernet.Bits() + 1
	}
	if hi == 0 {
		hi = 120
	}
	return lo, hi
}

// ValidatePrefix checks a node prefix against the rules.
func (r Rules) ValidatePrefix(p netip.Prefix) error {
	lo, hi := r.bounds()
	switch {
	case CheckIPv6Prefix(p) != nil:
		return bad("prefix", "prefix %v", CheckIPv6Prefix(p))
	case !r.Supernet.Contains(p.Addr()) || p.Bits() < r.Supernet.Bits():
		return bad("prefix", "prefix %s is outside the mesh supernet %s", p, r.Supernet)
	case p.Bits() < lo || p.Bits() > hi:
		return bad("prefix", "prefix %s has length /%d, want /%d to /%d", p, p.Bits(), lo, hi)
	}
	return nil
}

// EncodeMeta is the Meta of p's catalog entry, the inverse of ParseEntry:
// the schema version, node, public key, endpoint, prefix and (when set)
// keepalive in whole seconds, with extra (a role's own keys) beside them.
// extra never overrides those keys.
func EncodeMeta(p Peer, extra map[string]string) map[string]string {
	m := make(map[string]string, len(extra)+6)
	maps.Copy(m, extra)
	m[MetaVersion] = SchemaVersion
	m[MetaNode] = p.Node
	m[MetaPublicKey] = p.PublicKey.String()
	m[MetaEndpoint] = p.Endpoint.String()
	m[MetaPrefix] = p.Prefix.String()
	if p.Keepalive > 0 {
		m[MetaKeepalive] = strconv.Itoa(int(p.Keepalive / time.Second))
	} else {
		delete(m, MetaKeepalive)
	}
	return m
}

// ParseEntry validates a catalog entry. The error is the rejection reason,
// one line meant for status output; it quotes no value longer than needed.
func ParseEntry(e Entry, r Rules) (Peer, error) {
	if len(e.Meta) > MaxMetaKeys {
		return Peer{}, bad("meta", "meta has %d keys, more than %d", len(e.Meta), MaxMetaKeys)
	}
	// The first over-long value by key: the same entry always gets the
	// same reason, whatever the map's order.
	var tooLong []string
	for k, v := range e.Meta {
		if len(v) > MaxMetaValue {
			tooLong = append(tooLong, k)
		}
	}
	if len(tooLong) > 0 {
		k := slices.Min(tooLong)
		return Peer{}, bad("meta", "meta %s is %d characters, more than %d", clip(k), len(e.Meta[k]), MaxMetaValue)
	}
	if len(e.Tags) > MaxTags {
		return Peer{}, bad("tags", "%d tags, more than %d", len(e.Tags), MaxTags)
	}
	for _, tag := range e.Tags {
		if len(tag) > MaxMetaValue {
			return Peer{}, bad("tags", "a tag of %d characters, more than %d", len(tag), MaxMetaValue)
		}
	}
	if v := e.Meta[MetaVersion]; v != SchemaVersion {
		return Peer{}, bad("version", "meta v is %q, want %q", clip(v), SchemaVersion)
	}
	p := Peer{Tags: e.Tags, Health: e.Health, CreateIndex: e.CreateIndex}
	p.Node = e.Meta[MetaNode]
	if !IsDNSLabel(p.Node) {
		return Peer{}, bad("node", "node %q is not a DNS label", clip(p.Node))
	}
	var err error
	if p.PublicKey, err = ParsePublicKey(e.Meta[MetaPublicKey]); err != nil {
		return Peer{}, err
	}
	if p.Endpoint, err = ParseEndpoint(e.Meta[MetaEndpoint]); err != nil {
		return Peer{}, err
	}
	if err := r.checkEndpoint(p.Endpoint); err != nil {
		return Peer{}, err
	}
	pfx, err := netip.ParsePrefix(e.Meta[MetaPrefix])
	if err != nil {
		return Peer{}, bad("prefix", "prefix %q is not an IPv6 CIDR", clip(e.Meta[MetaPrefix]))
	}
	if err := r.ValidatePrefix(pfx); err != nil {
		return Peer{}, err
	}
	p.Prefix = pfx
	if s, ok := e.Meta[MetaKeepalive]; ok && s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 || n > 65535 {
			return Peer{}, bad("keepalive", "keepalive %q is not a number of seconds from 0 to 65535", clip(s))
		}
		if n > 0 && n < MinKeepalive {
			return Peer{}, bad("keepalive", "keepalive %ds is below %ds: every peer would send that often", n, MinKeepalive)
		}
		p.Keepalive = time.Duration(n) * time.Second
	}
	if r.Trust != nil {
		if err := r.Trust.verify(e, &p); err != nil {
			return Peer{}, err
		}
	}
	return p, nil
}

// MinKeepalive is the shortest persistent keepalive (seconds) an entry may
// ask of its peers.
const MinKeepalive = 10

// checkEndpoint refuses endpoints no peer should send to: this host's own
// loopback, unspecified, multicast or link-local addresses, and addresses
// inside the mesh (the tunnel would carry itself).
func (r Rules) checkEndpoint(ep netip.AddrPort) error {
	a := ep.Addr()
	switch {
	case a.IsLoopback(), a.IsUnspecified(), a.IsMulticast(), a.IsLinkLocalUnicast(), a.IsLinkLocalMulticast():
		return bad("endpoint", "endpoint %s is a loopback, unspecified, multicast or link-local address", ep)
	case r.Supernet.IsValid() && r.Supernet.Contains(a):
		return bad("endpoint", "endpoint %s is inside the mesh supernet %s", ep, r.Supernet)
	}
	return nil
}

// ParsePublicKey decodes a base64 WireGuard key of exactly 32 bytes.
func ParsePublicKey(s string) (wgtypes.Key, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) != wgtypes.KeyLen {
		return wgtypes.Key{}, bad("public_key", "public_key %q is not a base64 32-byte key", clip(s))
	}
	k, _ := wgtypes.NewKey(b)
	if k == (wgtypes.Key{}) {
		return wgtypes.Key{}, bad("public_key", "public_key is all zeros")
	}
	return k, nil
}

// ParseEndpoint parses an underlay endpoint "ip:port" ("[ip6]:port" for
// IPv6). Host names are refused: a peer's endpoint must not depend on DNS
// answering when the mesh is being repaired.
func ParseEndpoint(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil || ap.Port() == 0 || !ap.Addr().IsValid() || ap.Addr().IsUnspecified() || ap.Addr().Zone() != "" {
		return netip.AddrPort{}, bad("endpoint", "endpoint %q is not ip:port", clip(s))
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// IsDNSLabel reports whether s is a lower-case RFC 1123 label.
func IsDNSLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// clip keeps hostile values from flooding status output.
func clip(s string) string {
	const max = 64
	if len(s) <= max {
		return s
	}
	return s[:max] + "..."
}

// EntryError is why a catalog entry is invalid. Field names the Meta field
// at fault (or "meta", "version"); it is a small fixed set, fit for a metric
// label.
type EntryError struct {
	Field string
	Msg   string
}

func (e *EntryError) Error() string { return e.Msg }

func bad(field, format string, args ...any) error {
	return &EntryError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// Rejection codes for conflicts between otherwise valid entries; invalid
// entries carry their EntryError's Field.
const (
	CodeDuplicateNode = "duplicate_node"
	CodeDuplicateKey  = "duplicate_key"
	CodeOwnKey        = "own_key"
	CodeOverlapsSelf  = "overlaps_self"
	CodeOverlap       = "overlapping_prefix"
	// CodeMaxPeers: a valid entry past the peer cap (Planner.MaxPeers).
	CodeMaxPeers = "max_peers"
)

// Self is this host's own identity.
type Self struct {
	Node      string
	PublicKey wgtypes.Key
	Prefix    netip.Prefix
}

// Rejection is an entry that does not become a peer, and why.
type Rejection struct {
	ServiceID string
	Node      string
	Reason    string
	// Code classifies the reason (an EntryError's Field or a Code*
	// constant).
	Code string
}

// Desire computes the desired peers from a catalog snapshot. It returns the
// accepted peers sorted by node name and the rejected entries sorted by
// service ID. This host's own entry is neither.
//
// Conflicts go to the older registration: entries are taken in CreateIndex
// order and an entry whose node name, key or prefix collides with one
// already accepted is rejected.
func Desire(entries []Entry, self Self, r Rules) ([]Peer, []Rejection) {
	return (*ParseCache)(nil).Desire(entries, self, r)
}

// ParseCache keeps the parse of every entry by service ID, so that a
// catalog of thousands of entries, of which one changed, costs one parse.
// An entry is parsed again when its ModifyIndex changed (or is 0). Use one
// cache with one set of Rules; it is not safe for concurrent use.
type ParseCache struct {
	m map[string]cachedParse
	// The indexes of the last result's peers (see patch).
	byNode map[string]string
	byKey  map[wgtypes.Key]string
	claims *prefixSet

	// What the last Desire returned and from what, for the next one to
	// patch (see patch); byNode, byKey and claims then hold its peers.
	last      []Entry
	lastOut   []Peer
	lastRej   []Rejection
	lastSelf  Self
	lastRules Rules
	patchable bool
	// lastValid says last still holds the entries the cache was last
	// given: PlanChanged's caller changes its list in place.
	lastValid bool

	// trust is the state of the trust checks (nil: none beyond the
	// entry's own), set by Planner; good is the last peer accepted for
	// each service ID, kept when its entry is replaced by one rejected
	// (keeps).
	trust *trustState
	good  map[string]Peer
	// parses counts the entries parsed (and verified): a cache hit is not
	// one.
	parses uint64
}

type cachedParse struct {
	modify uint64
	p      Peer
	err    error
}

// parse is ParseEntry through the cache (a nil cache parses every time).
func (c *ParseCache) parse(e Entry, r Rules, next map[string]cachedParse) (Peer, error) {
	if c == nil {
		return ParseEntry(e, r)
	}
	hit, ok := c.m[e.ServiceID]
	if !ok || e.ModifyIndex == 0 || hit.modify != e.ModifyIndex {
		p, err := ParseEntry(e, r)
		hit = cachedParse{modify: e.ModifyIndex, p: p, err: err}
		c.parses++
	}
	next[e.ServiceID] = hit
	p := hit.p
	// Health comes from the checks and CreateIndex from the catalog, not
	// from the instance's own writes.
	p.Health, p.CreateIndex = e.Health, e.CreateIndex
	return p, hit.err
}

// parallelParse is how many entries to parse, at least, before the work
// is spread over the CPUs: verifying a signed entry is two ed25519
// verifications, and a first read of 10,000 entries is 20,000 of them.
// It is also the size of the chunks the work is handed out in.
const parallelParse = 256

// misses parses, on every CPU (Desire leaves one to the device when it
// hands peers out), the entries that parse would not find in
// the cache, chunk by chunk in the order Desire judges them, so that
// judging (and whatever Desire's caller does with the peers accepted so
// far) goes on while later chunks are verified.
type misses struct {
	order []int          // positions in entries, in judging order
	out   []*cachedParse // by position; nil: a cache hit
	done  []chan struct{}
}

// parseMisses starts parsing the misses among entries on workers
// goroutines, taken in order (nil: none to do, or too few to be worth it).
func (c *ParseCache) parseMisses(entries []Entry, order []int, r Rules, workers int) *misses {
	if c == nil || r.Trust == nil || len(entries) < parallelParse {
		return nil
	}
	// The workers read no map: Desire writes the cache as it judges.
	miss := make([]bool, len(entries))
	n := 0
	for i, e := range entries {
		if hit, ok := c.m[e.ServiceID]; !ok || e.ModifyIndex == 0 || hit.modify != e.ModifyIndex {
			miss[i] = true
			n++
		}
	}
	if n < parallelParse {
		return nil
	}
	if c.m == nil {
		c.m = map[string]cachedParse{}
	}
	m := &misses{order: order, out: make([]*cachedParse, len(entries)), done: make([]chan struct{}, (len(order)+parallelParse-1)/parallelParse)}
	for i := range m.done {
		m.done[i] = make(chan struct{})
	}
	var next atomic.Int64
	for range workers {
		go func() {
			for {
				k := int(next.Add(1) - 1)
				if k >= len(m.done) {
					return
				}
				chunk := order[k*parallelParse : min((k+1)*parallelParse, len(order))]
				m.parseChunk(entries, chunk, miss, r)
				close(m.done[k])
			}
		}()
	}
	c.parses += uint64(n)
	return m
}

// parseChunk parses the misses among entries[chunk], verifying their
// signatures in one batch: when the batch holds a bad one, every entry of
// the chunk is parsed again with each signature verified alone (which
// finds it). A chunk of valid entries costs one batch; one with a bad
// signature costs the batch and the signatures one by one, at worst about
// 1.6 times what verifying them alone would.
func (m *misses) parseChunk(entries []Entry, chunk []int, miss []bool, r Rules) {
	batch := trust.NewBatch(2 * len(chunk))
	rb := r
	rb.Trust = r.Trust.batched(batch)
	for _, i := range chunk {
		if miss[i] {
			p, err := ParseEntry(entries[i], rb)
			m.out[i] = &cachedParse{modify: entries[i].ModifyIndex, p: p, err: err}
		}
	}
	if batch.Verify() {
		return
	}
	for _, i := range chunk {
		if miss[i] {
			p, err := ParseEntry(entries[i], r)
			m.out[i] = &cachedParse{modify: entries[i].ModifyIndex, p: p, err: err}
		}
	}
}

// wait returns the parse of entries[order[k]] the workers made, or nil
// (a cache hit), once its chunk is done. Every chunk is waited for, so no
// worker outlives Desire.
func (m *misses) wait(k int) *cachedParse {
	if m == nil {
		return nil
	}
	if k%parallelParse == 0 {
		<-m.done[k/parallelParse]
	}
	return m.out[m.order[k]]
}

// prefixLens is every prefix length entries claim (whether the entry is
// valid or not) and the kept good peers have, sorted: a superset of the
// lengths of the peers a pass can accept, which is all the overlap index
// needs, known before any entry is verified.
func prefixLens(entries []Entry, good map[string]Peer) []int {
	seen := map[int]bool{}
	for i := range entries {
		if p, err := netip.ParsePrefix(entries[i].Meta[MetaPrefix]); err == nil {
			seen[p.Bits()] = true
		}
	}
	for _, g := range good {
		seen[g.Prefix.Bits()] = true
	}
	return slices.Sorted(maps.Keys(seen))
}

// Desire is the package's Desire, parsing through the cache.
func (c *ParseCache) Desire(entries []Entry, self Self, r Rules) ([]Peer, []Rejection) {
	return c.desireEmit(entries, self, r, nil)
}

// desireEmit is Desire; emit, when not nil, makes it a full pass that
// hands out the peers it accepts as it goes (desire).
func (c *ParseCache) desireEmit(entries []Entry, self Self, r Rules, emit func([]Peer)) ([]Peer, []Rejection) {
	if emit == nil && c != nil && c.patchable && c.lastValid && self == c.lastSelf && r == c.lastRules {
		if out, rej, ok := c.patch(entries, self, r); ok {
			c.last, c.lastOut, c.lastRej = entries, out, rej
			return out, rej
		}
	}
	out, rej := c.desire(entries, self, r, emit)
	if c != nil {
		c.last, c.lastOut, c.lastRej, c.lastSelf, c.lastRules = entries, out, rej, self, r
		c.lastValid = true
		c.patchable = slices.IsSortedFunc(entries, func(a, b Entry) int {
			return cmp.Or(strings.Compare(a.ServiceID, b.ServiceID), -1) // strictly
		}) && !slices.ContainsFunc(rej, func(x Rejection) bool { return conflict(x.Code) })
	}
	return out, rej
}

// desire is Desire's full pass over every entry. emit, when not nil, is
// given the peers accepted so far, chunk by chunk, while later entries are
// still being verified: no later entry can take back an acceptance (the
// first claim wins), so they are final.
func (c *ParseCache) desire(entries []Entry, self Self, r Rules, emit func([]Peer)) ([]Peer, []Rejection) {
	// A full pass is the rare one (a first read, a conflict, many changes):
	// it builds its maps anew, and a cache keeps them for patch.
	next := make(map[string]cachedParse, len(entries))
	byNode, byKey, claimed := map[string]string{}, map[wgtypes.Key]string{}, newPrefixSet(nil)
	var good, nextGood map[string]Peer
	var st *trustState
	if c != nil {
		good, nextGood, st = c.good, make(map[string]Peer, len(entries)), c.trust
		defer func() { c.m, c.byNode, c.byKey, c.claims, c.good = next, byNode, byKey, claimed, nextGood }()
	}
	if st != nil {
		st.nextExpiry = time.Time{}
	}
	// Judged in catalog order: the first claim wins.
	order := make([]int, len(entries))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int {
		return cmp.Or(cmp.Compare(entries[a].CreateIndex, entries[b].CreateIndex), strings.Compare(entries[a].ServiceID, entries[b].ServiceID))
	})
	// Entries handed out are being written meanwhile: one CPU is left to
	// the device's side of those writes.
	workers := runtime.GOMAXPROCS(0)
	if emit != nil && workers > 1 {
		workers--
	}
	fresh := c.parseMisses(entries, order, r, workers)

	var (
		out = make([]Peer, 0, len(entries))
		rej []Rejection
	)
	claimed.lens = prefixLens(entries, good)
	batch := 0 // out[batch:] are not emitted yet
	for k, i := range order {
		e := &entries[i]
		if f := fresh.wait(k); f != nil {
			c.m[e.ServiceID] = *f // a hit for parse below
		}
		p, err := c.parse(*e, r, next)
		d := decide(e, p, err, self, byNode, byKey, claimed, good, st)
		if d.accept {
			byNode[d.peer.Node] = e.ServiceID
			byKey[d.peer.PublicKey] = d.peer.Node
			claimed.add(d.peer)
			st.accepted(d.peer)
			if nextGood != nil {
				nextGood[e.ServiceID] = d.peer
			}
			out = append(out, d.peer)
		}
		if d.rej != nil {
			rej = append(rej, *d.rej)
		}
		if emit != nil && (k+1)%parallelParse == 0 && batch < len(out) {
			emit(slices.Clone(out[batch:]))
			batch = len(out)
		}
	}
	if emit != nil && batch < len(out) {
		emit(slices.Clone(out[batch:]))
	}
	if len(out) == 0 {
		out = nil
	}
	byName := func(a, b Peer) int { return strings.Compare(a.Node, b.Node) }
	if !slices.IsSortedFunc(out, byName) {
		slices.SortFunc(out, byName)
	}
	slices.SortFunc(rej, func(a, b Rejection) int { return strings.Compare(a.ServiceID, b.ServiceID) })
	return out, rej
}

// codeSkip is judge's verdict on this host's own entry: neither a peer nor
// a rejection.
const codeSkip = "-"

// decision is what one entry comes to: a peer accepted, a rejection, or
// both (the entry is rejected and the last peer accepted for its service
// ID stays: keeps).
type decision struct {
	peer   Peer
	accept bool
	rej    *Rejection
	// conflict is set when the verdict depends on another entry.
	conflict bool
}

// decide judges one parsed entry (judge) and, when it is rejected for
// a claim anyone could have written, judges good[e.ServiceID] in its place.
func decide(e *Entry, p Peer, err error, self Self, byNode map[string]string, byKey map[wgtypes.Key]string, claimed *prefixSet, good map[string]Peer, st *trustState) decision {
	code, reason := judge(e, p, err, self, byNode, byKey, claimed, st)
	switch code {
	case "":
		return decision{peer: p, accept: true}
	case codeSkip:
		return decision{}
	}
	d := decision{rej: &Rejection{ServiceID: e.ServiceID, Node: e.Meta[MetaNode], Reason: reason, Code: code}, conflict: conflict(code)}
	if g, ok := good[e.ServiceID]; ok && keeps(code) {
		switch code, _ := judge(e, g, nil, self, byNode, byKey, claimed, st); {
		case code == "":
			d.peer, d.accept = g, true
		case conflict(code):
			d.conflict = true
		}
	}
	return d
}

// judge is Desire's verdict on one parsed entry, given the peers accepted
// before it: "" to accept it, codeSkip, or a rejection's code and reason.
func judge(e *Entry, p Peer, err error, self Self, byNode map[string]string, byKey map[wgtypes.Key]string, claimed *prefixSet, st *trustState) (code, reason string) {
	if err == nil && p.Node == self.Node {
		return codeSkip, ""
	}
	if err != nil {
		if e.Meta[MetaNode] == self.Node {
			return codeSkip, ""
		}
		code := "invalid"
		var ee *EntryError
		if errors.As(err, &ee) {
			code = ee.Field
		}
		return code, err.Error()
	}
	if code, reason := st.check(p); code != "" {
		return code, reason
	}
	switch {
	case byNode[p.Node] != "":
		return CodeDuplicateNode, fmt.Sprintf("node %s is already registered by %s", p.Node, byNode[p.Node])
	case p.PublicKey == self.PublicKey:
		return CodeOwnKey, "public_key is this host's own key"
	case byKey[p.PublicKey] != "":
		return CodeDuplicateKey, fmt.Sprintf("public_key is already used by node %s", byKey[p.PublicKey])
	case self.Prefix.IsValid() && self.Prefix.Overlaps(p.Prefix):
		return CodeOverlapsSelf, fmt.Sprintf("prefix %s overlaps this host's prefix %s", p.Prefix, self.Prefix)
	}
	if c, ok := claimed.overlap(p.Prefix); ok {
		return CodeOverlap, fmt.Sprintf("prefix %s overlaps %s of node %s", p.Prefix, c.Prefix, c.Node)
	}
	return "", ""
}

// conflict reports whether a rejection code is a conflict between entries
// (which depends on which came first) rather than about one entry alone.
func conflict(code string) bool {
	return code == CodeDuplicateNode || code == CodeDuplicateKey || code == CodeOverlap
}

// prefixSet finds overlaps among claimed prefixes in time proportional to
// the number of distinct prefix lengths in use (in a real fleet, one),
// instead of scanning every claimed prefix: a snapshot of 10,000 nodes must
// not cost 10^8 comparisons.
type prefixSet struct {
	lens  []int                  // distinct lengths of all candidates
	exact map[netip.Prefix]claim // claimed prefixes
	// under holds, for each claimed prefix and its ancestors at every
	// length in lens, the first claim under it and how many there are.
	under map[netip.Prefix]underClaims
}

type underClaims struct {
	first claim
	n     int
}

// claim is a claimed prefix and the node claiming it.
type claim struct {
	Prefix netip.Prefix
	Node   string
}

func newPrefixSet(lens []int) *prefixSet {
	return &prefixSet{lens: lens, exact: map[netip.Prefix]claim{}, under: map[netip.Prefix]underClaims{}}
}

// overlap returns a claimed peer whose prefix overlaps p: p's ancestor or p
// itself is claimed, or p is an ancestor of a claimed prefix.
func (s *prefixSet) overlap(p netip.Prefix) (claim, bool) {
	if u, ok := s.under[p]; ok {
		return u.first, true
	}
	for _, l := range s.lens {
		if l > p.Bits() {
			break
		}
		if c, ok := s.exact[netip.PrefixFrom(p.Addr(), l).Masked()]; ok {
			return c, true
		}
	}
	return claim{}, false
}

func (s *prefixSet) add(p Peer) {
	c := claim{Prefix: p.Prefix, Node: p.Node}
	s.exact[c.Prefix] = c
	s.eachUnder(c.Prefix, func(a netip.Prefix) {
		u, ok := s.under[a]
		if !ok {
			u.first = c
		}
		u.n++
		s.under[a] = u
	})
}

// remove takes back a claim add made. The counts stay right; the first
// claim kept under an ancestor may then be the removed one, which only
// matters for wording a reason, and reasons are worded by Desire's full
// pass, which builds the set anew.
func (s *prefixSet) remove(p netip.Prefix) {
	delete(s.exact, p)
	s.eachUnder(p, func(a netip.Prefix) {
		u := s.under[a]
		if u.n--; u.n <= 0 {
			delete(s.under, a)
			return
		}
		s.under[a] = u
	})
}

// eachUnder calls f with p's ancestors at the lengths in lens, and p.
func (s *prefixSet) eachUnder(p netip.Prefix, f func(netip.Prefix)) {
	for _, l := range s.lens {
		if l >= p.Bits() {
			break
		}
		f(netip.PrefixFrom(p.Addr(), l).Masked())
	}
	f(p)
}
