// Package firewall keeps the nftables table of a gateway's user link: which
// destinations each user peer may send to. The table is meshd's own (family
// ip6, name "meshd"); no other table is ever read or written. Rules are
// grouped by policy (a distinct allow list), so the ruleset grows with the
// number of policies, not of peers; each policy's peers sit in a set that is
// changed element by element.
//
// Ruleset is the pure model; Table writes it through netlink
// (github.com/google/nftables), without shelling out.
package firewall
