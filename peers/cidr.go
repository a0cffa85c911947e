package peers

import (
	"fmt"
	"net/netip"
)

// CheckIPv6Prefix checks that p is a masked IPv6 CIDR: a valid prefix of
// an IPv6 address that is not IPv4-mapped, with no bit set past its
// length. It is the one such check meshd has (node prefixes, the mesh
// supernet, gateway pools and allow lists).
func CheckIPv6Prefix(p netip.Prefix) error {
	switch {
	case !p.IsValid():
		return fmt.Errorf("%s is not a CIDR", p)
	case !p.Addr().Is6() || p.Addr().Is4In6():
		return fmt.Errorf("%s is not IPv6", p)
	case p.Masked() != p:
		return fmt.Errorf("%s has host bits set (want %s)", p, p.Masked())
	}
	return nil
}

// ParseIPv6Prefix parses s as a masked IPv6 CIDR (see CheckIPv6Prefix).
func ParseIPv6Prefix(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an IPv6 CIDR", clip(s))
	}
	return p, CheckIPv6Prefix(p)
}
