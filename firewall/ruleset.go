package firewall

import (
	"net/netip"
	"slices"
)

// Rule lets packets from Sources (user peer addresses) through to what its
// destinations cover.
type Rule struct {
	Sources []netip.Addr
	// Named are destinations inside a reserved prefix (Ruleset.Own or
	// Ruleset.Reserved): they are accepted before the reserved prefixes
	// are dropped. Where one overlaps Ruleset.Pool it reaches only the
	// addresses in Reach there.
	Named []netip.Prefix
	// Reach is the addresses of Ruleset.Pool that Sources may reach when
	// Named overlaps it: their own organization's peers.
	Reach []netip.Addr
	// Group names the rule among rules of equal destinations (an
	// organization, when Reach is used); it only orders rules.
	Group string
	// Destinations are accepted after the reserved prefixes are dropped:
	// a wide one (the mesh supernet) covers mesh hosts, never a gateway.
	Destinations []netip.Prefix
}

// usesReach reports whether r needs a Reach set: a named destination
// overlaps pool.
func (r Rule) usesReach(pool netip.Prefix) bool {
	return pool.IsValid() && slices.ContainsFunc(r.Named, pool.Overlaps)
}

// Ruleset is the whole policy of a user link: packets arriving on Interface
// pass when a rule matches, and are dropped otherwise, whether they are
// forwarded or addressed to the gateway itself. In order, a packet from a
// rule's sources is
//
//  1. accepted to a named destination overlapping Pool, if it goes to an
//     address in the rule's Reach;
//  2. dropped when it goes anywhere else in Pool;
//  3. accepted to a named destination (a gateway host's own addresses);
//  4. dropped when it goes into Own or a Reserved prefix;
//  5. accepted to one of the rule's Destinations;
//  6. dropped.
type Ruleset struct {
	Interface string
	// MeshInterface, when set, is the mesh link: packets are forwarded
	// into it only from Interface (users) and from itself, never from the
	// underlay or any other link (a neighbour routing the mesh through the
	// gateway would otherwise reach mesh hosts with any source it likes).
	MeshInterface string
	// Pool is this gateway's user pool, and Own its host's prefix (Pool
	// lies in it).
	Pool, Own netip.Prefix
	// Reserved are the other gateways' host prefixes: reached only when
	// named, and nothing from them is forwarded into Interface but
	// answers to what a user opened (the users of another gateway may be
	// of any organization, which this one cannot tell).
	Reserved []netip.Prefix
	Rules    []Rule
}

// sameShape reports whether two rulesets differ at most in their rules'
// sources and reach, which can be changed in place as set elements.
func sameShape(a, b Ruleset) bool {
	return a.Interface == b.Interface && a.MeshInterface == b.MeshInterface && a.Pool == b.Pool && a.Own == b.Own &&
		slices.Equal(a.Reserved, b.Reserved) &&
		slices.EqualFunc(a.Rules, b.Rules, func(x, y Rule) bool {
			return x.Group == y.Group && slices.Equal(x.Named, y.Named) && slices.Equal(x.Destinations, y.Destinations)
		})
}

// diffSources lists what to add and delete to take have to want.
func diffSources(have, want []netip.Addr) (add, del []netip.Addr) {
	in := make(map[netip.Addr]bool, len(have))
	for _, a := range have {
		in[a] = true
	}
	keep := make(map[netip.Addr]bool, len(want))
	for _, a := range want {
		keep[a] = true
		if !in[a] {
			add = append(add, a)
		}
	}
	for _, a := range have {
		if !keep[a] {
			del = append(del, a)
		}
	}
	return add, del
}
