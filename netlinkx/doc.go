// Package netlinkx applies meshd's plans to the kernel: the WireGuard link,
// its address, its peers (through wgctrl) and one route per peer prefix.
//
// Two link backends sit behind one Link type. Where the kernel has the
// wireguard module, the link is a netlink "wireguard" link. Otherwise it is
// a userspace device (golang.zx2c4.com/wireguard over /dev/net/tun) run by a
// separate, detached process, so that the data plane outlives meshd itself:
// restarting the agent neither recreates the link nor drops packets. wgctrl
// configures both the same way.
//
// Every write is counted (Writes) and made only when what the kernel has
// differs from what is wanted. Peers are changed one by one, never with
// ReplacePeers; routes carry meshd's own protocol number (RouteProtocol) and
// only routes with that tag are ever listed as meshd's or deleted.
package netlinkx
