package gateway

import (
	"cmp"
	"fmt"
	"hash/maphash"
	"net/netip"
	"slices"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/firewall"
	"meshd.dev/meshd/peers"
)

// Pair is one KV pair under a gateway's peers folder, as read.
type Pair struct {
	Key         string
	Value       []byte
	CreateIndex uint64
	ModifyIndex uint64
}

// Rejection is a record that does not become a peer, and why.
type Rejection struct {
	Key    string
	Reason string
}

// Stored is a valid record with the KV index it was read at.
type Stored struct {
	Record
	ModifyIndex uint64
}

// State is the desired state of a gateway's user link at one moment.
type State struct {
	// Peers are the user peers to configure, each with its address as a
	// /128 and no endpoint (users roam; WireGuard learns where they are).
	Peers []peers.Peer
	// Records are the records behind Peers, in the same order.
	Records []Stored
	// Expired records are past their expiry: the gateway deletes them.
	Expired []Stored
	// Rejected records are invalid or conflict with an older one.
	Rejected []Rejection
	// NextExpiry is the earliest expiry of a live peer, or zero.
	NextExpiry time.Time
}

// Decoder decodes a gateway's records and keeps each result while its
// key's ModifyIndex stays the same, so that a wake of a gateway with many
// peers decodes only the records that changed. It is not safe for
// concurrent use.
type Decoder struct {
	gw   string
	prev map[string]decoded
	seed maphash.Seed
}

type decoded struct {
	modify uint64
	sum    uint64 // the value's hash (not a copy: records can be many)
	rec    Record
	key    wgtypes.Key
	err    error
}

// NewDecoder returns a decoder for gateway gw's records.
func NewDecoder(gw string) *Decoder {
	return &Decoder{gw: gw, prev: map[string]decoded{}, seed: maphash.MakeSeed()}
}

func (d *Decoder) decode(p Pair, next map[string]decoded) decoded {
	// A pair read from Consul changes its ModifyIndex with every write;
	// the value is compared too, so pairs made up without indexes (tests)
	// are never confused.
	sum := maphash.Bytes(d.seed, p.Value)
	if c, ok := d.prev[p.Key]; ok && p.ModifyIndex != 0 && c.modify == p.ModifyIndex && c.sum == sum {
		next[p.Key] = c
		return c
	}
	r, err := Decode(d.gw, p.Key, p.Value)
	c := decoded{modify: p.ModifyIndex, sum: sum, rec: r, err: err}
	if err == nil {
		c.key = r.Key()
	}
	next[p.Key] = c
	return c
}

// Desire computes the desired state of a gateway's user link from its
// peers folder at time now, decoding records with d. Records are taken
// oldest first (KV CreateIndex); one whose address or key an older record
// holds is rejected, as is one whose address is outside pool or whose
// allow list leaves supernet.
func Desire(d *Decoder, pairs []Pair, pool, supernet netip.Prefix, now time.Time) State {
	sorted := slices.Clone(pairs)
	slices.SortFunc(sorted, func(a, b Pair) int {
		return cmp.Or(cmp.Compare(a.CreateIndex, b.CreateIndex), strings.Compare(a.Key, b.Key))
	})
	var st State
	byAddr := map[netip.Addr]string{}
	byKey := map[wgtypes.Key]string{}
	type item struct {
		kvKey, id string
		key       wgtypes.Key
		s         Stored
	}
	live := make([]item, 0, len(pairs))
	next := make(map[string]decoded, len(pairs))
	defer func() { d.prev = next }()
	for _, p := range sorted {
		c := d.decode(p, next)
		r, err := c.rec, c.err
		if err == nil {
			err = checkRecord(r, pool, supernet)
		}
		if err != nil {
			st.Rejected = append(st.Rejected, Rejection{Key: p.Key, Reason: err.Error()})
			continue
		}
		s := Stored{Record: r, ModifyIndex: p.ModifyIndex}
		if r.Expired(now) {
			st.Expired = append(st.Expired, s)
			continue
		}
		k := c.key
		if other, ok := byAddr[r.Address]; ok {
			st.Rejected = append(st.Rejected, Rejection{Key: p.Key, Reason: fmt.Sprintf("address %s is held by %s", r.Address, other)})
			continue
		}
		if other, ok := byKey[k]; ok {
			st.Rejected = append(st.Rejected, Rejection{Key: p.Key, Reason: fmt.Sprintf("public key is held by %s", other)})
			continue
		}
		id := r.ID()
		byAddr[r.Address], byKey[k] = id, id
		live = append(live, item{p.Key, id, k, s})
		if r.Expires != nil && (st.NextExpiry.IsZero() || r.Expires.Before(st.NextExpiry)) {
			st.NextExpiry = *r.Expires
		}
	}
	// By org, then name: their KV keys sort alike, and are already built.
	slices.SortFunc(live, func(a, b item) int { return strings.Compare(a.kvKey, b.kvKey) })
	st.Records = make([]Stored, 0, len(live))
	st.Peers = make([]peers.Peer, 0, len(live))
	for _, it := range live {
		st.Records = append(st.Records, it.s)
		st.Peers = append(st.Peers, peers.Peer{Node: it.id, PublicKey: it.key, Prefix: netip.PrefixFrom(it.s.Address, 128)})
	}
	slices.SortFunc(st.Rejected, func(a, b Rejection) int { return strings.Compare(a.Key, b.Key) })
	return st
}

// checkRecord checks a record against its gateway.
func checkRecord(r Record, pool, supernet netip.Prefix) error {
	if !pool.Contains(r.Address) || r.Address == pool.Addr() {
		return fmt.Errorf("address %s is not a usable address of the pool %s", r.Address, pool)
	}
	return CheckAllow(r.Allow, supernet)
}

// CheckAllow checks that every allowed destination lies in the supernet.
func CheckAllow(allow []netip.Prefix, supernet netip.Prefix) error {
	for _, p := range allow {
		if p.Bits() < supernet.Bits() || !supernet.Contains(p.Addr()) {
			return fmt.Errorf("allow %s is outside the mesh supernet %s", p, supernet)
		}
	}
	return nil
}

// Scope is what a gateway keeps its users out of unless an allow list
// names it: gateway hosts. Its own host prefix holds its user pool, where a
// user reaches only its own organization's peers even when named; another
// gateway's prefix holds users this one cannot tell the organization of,
// so nothing from there is forwarded to this gateway's users but answers
// to what they opened.
type Scope struct {
	// Pool is this gateway's user pool, and Own its host prefix.
	Pool, Own netip.Prefix
	// Others are the other gateways' host prefixes.
	Others []netip.Prefix
}

// Ruleset is the firewall policy of the user link iface (mesh is the mesh
// link) for recs within s.
func (s Scope) Ruleset(iface, mesh string, recs []Stored) firewall.Ruleset {
	others := make([]netip.Prefix, 0, len(s.Others))
	for _, p := range s.Others {
		if p.IsValid() && !p.Overlaps(s.Own) {
			others = append(others, p.Masked())
		}
	}
	slices.SortFunc(others, netip.Prefix.Compare)
	others = slices.Compact(others)
	return firewall.Ruleset{Interface: iface, MeshInterface: mesh, Pool: s.Pool, Own: s.Own, Reserved: others,
		Rules: s.rules(recs, others)}
}

// named reports whether d is inside a gateway's prefix: this one's or one
// of others.
func (s Scope) named(d netip.Prefix, others []netip.Prefix) bool {
	inside := func(r netip.Prefix) bool { return r.IsValid() && d.Bits() >= r.Bits() && r.Contains(d.Addr()) }
	return inside(s.Own) || slices.ContainsFunc(others, inside)
}

// rules groups peers by allow list (and by organization where the list
// names part of the pool): one rule per group, so that the firewall holds
// as many rules as there are policies, not peers.
func (s Scope) rules(recs []Stored, others []netip.Prefix) []firewall.Rule {
	byOrg := map[string][]netip.Addr{}
	for _, r := range recs {
		byOrg[r.Org] = append(byOrg[r.Org], r.Address)
	}
	byPolicy := map[string]*firewall.Rule{}
	for _, rec := range recs {
		allow := slices.Clone(rec.Allow)
		slices.SortFunc(allow, netip.Prefix.Compare)
		allow = slices.Compact(allow)
		var r firewall.Rule
		for _, d := range allow {
			if s.named(d, others) {
				r.Named = append(r.Named, d)
			} else {
				r.Destinations = append(r.Destinations, d)
			}
		}
		if s.Pool.IsValid() && slices.ContainsFunc(r.Named, s.Pool.Overlaps) {
			r.Group = rec.Org
		}
		key := fmt.Sprint(r.Group, r.Named, r.Destinations)
		have, ok := byPolicy[key]
		if !ok {
			if r.Group != "" {
				r.Reach = slices.Clone(byOrg[rec.Org])
				slices.SortFunc(r.Reach, netip.Addr.Compare)
			}
			have = &r
			byPolicy[key] = have
		}
		have.Sources = append(have.Sources, rec.Address)
	}
	out := make([]firewall.Rule, 0, len(byPolicy))
	for _, r := range byPolicy {
		slices.SortFunc(r.Sources, netip.Addr.Compare)
		out = append(out, *r)
	}
	slices.SortFunc(out, func(a, b firewall.Rule) int {
		return cmp.Or(slices.CompareFunc(a.Named, b.Named, netip.Prefix.Compare),
			slices.CompareFunc(a.Destinations, b.Destinations, netip.Prefix.Compare),
			strings.Compare(a.Group, b.Group))
	})
	return out
}
