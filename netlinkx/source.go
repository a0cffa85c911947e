package netlinkx

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// ErrNoDefaultRoute means the host has no default route to take an
// underlay address from.
var ErrNoDefaultRoute = errors.New("no default route")

// DefaultSource returns the source address the kernel picks for traffic
// on its default route, IPv4 first, then IPv6: the address other hosts most
// likely reach this one on. It asks the kernel for a route to a
// documentation address (RFC 5737, RFC 3849); nothing is sent.
func DefaultSource() (netip.Addr, error) {
	for _, probe := range []string{"192.0.2.1", "2001:db8::1"} {
		routes, err := netlink.RouteGet(net.ParseIP(probe))
		if err != nil {
			continue
		}
		for _, r := range routes {
			if a, ok := netip.AddrFromSlice(r.Src); ok && a.IsValid() && !a.IsUnspecified() {
				return a.Unmap(), nil
			}
		}
	}
	return netip.Addr{}, fmt.Errorf("detect this host's underlay address: %w", ErrNoDefaultRoute)
}
