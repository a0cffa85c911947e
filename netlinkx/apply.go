package netlinkx

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/peers"
)

// Observe reads what the kernel has: every peer of the device and meshd's
// tagged routes through the link. Right after an Ensure that wrote nothing,
// it uses the device as Ensure read it: one read of a large device per
// reconcile, not two.
func (l *Link) Observe() (peers.Observed, error) {
	var obs peers.Observed
	dev := l.read
	l.read = nil
	if dev == nil {
		var err error
		if dev, err = l.wg.Device(l.opts.Name); err != nil {
			return obs, fmt.Errorf("read WireGuard device %s: %w", l.opts.Name, err)
		}
	}
	for _, p := range deviceStats(dev).Peers {
		obs.Peers = append(obs.Peers, peers.KernelPeer{PublicKey: p.PublicKey, Endpoint: p.Endpoint,
			AllowedIPs: p.AllowedIPs, Keepalive: p.Keepalive})
	}
	idx, err := l.linkIndex()
	if err != nil {
		return obs, err
	}
	obs.Routes, err = l.routes(idx)
	obs.Sort()
	return obs, err
}

// routes lists meshd's tagged IPv6 routes through link idx in the main
// table. Routes of other protocols, even to mesh prefixes, are not listed.
func (l *Link) routes(idx int) ([]netip.Prefix, error) {
	filter := &netlink.Route{LinkIndex: idx, Protocol: RouteProtocol}
	// The dump is taken route by route: a list of 10,000 netlink.Route
	// values would be megabytes, held for the length of the dump.
	var out []netip.Prefix
	var err error
	// A dump interrupted by a concurrent change may be inconsistent; ask again.
	for range 5 {
		out = out[:0]
		err = l.nh.RouteListFilteredIter(netlink.FAMILY_V6, filter, netlink.RT_FILTER_OIF|netlink.RT_FILTER_PROTOCOL, func(r netlink.Route) bool {
			if r.Dst != nil {
				if p, ok := prefixOf(*r.Dst); ok {
					out = append(out, p)
				}
			}
			return true
		})
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("list routes of %s: %w", l.opts.Name, err)
	}
	return out, nil
}

// Apply writes a plan: peers first, then new routes, then stale routes go,
// then removed peers, so that a changed peer is never without a path. It
// keeps going after a failed step and returns every failure.
//
// A plan that only adds, and many (a first sync's writes, thousands of
// peers at a time: addsOnly), adds its routes while the device takes its
// peers: they are routes to prefixes no peer of the device had, and each
// is one netlink request, so that after the peers they would add about a
// tenth of the device's own time to a first sync.
func (l *Link) Apply(plan peers.Plan) error {
	if addsOnly(plan) {
		if idx, err := l.linkIndex(); err == nil {
			return l.applyAdds(plan, idx)
		}
	}
	errs := l.upsert(plan.Upsert)
	if len(plan.AddRoutes)+len(plan.DelRoutes) == 0 {
		return l.removePeers(plan.Remove, errs)
	}
	idx, err := l.linkIndex()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	errs = append(errs, l.addRoutes(idx, plan.AddRoutes)...)
	l.read = nil
	errs = append(errs, l.delRoutes(idx, plan.DelRoutes)...)
	return l.removePeers(plan.Remove, errs)
}

// overlapAdds is the fewest peers of a plan that only adds for Apply to
// add its routes beside the device's write.
const overlapAdds = 256

// addsOnly says whether plan only adds peers and routes, at least
// overlapAdds peers.
func addsOnly(plan peers.Plan) bool {
	return len(plan.Upsert) >= overlapAdds && len(plan.AddRoutes) > 0 && len(plan.DelRoutes)+len(plan.Remove) == 0
}

// applyAdds is Apply for a plan that only adds: its routes are added
// through link idx on another goroutine while the device takes the peers.
func (l *Link) applyAdds(plan peers.Plan, idx int) error {
	routes := make(chan []error, 1)
	go func() { routes <- l.addRoutes(idx, plan.AddRoutes) }()
	errs := l.upsert(plan.Upsert)
	errs = append(errs, <-routes...)
	l.read = nil // the device as last read is not the device now
	return errors.Join(errs...)
}

// upsert configures peers in one device write and returns its error.
func (l *Link) upsert(ps []peers.Peer) []error {
	if len(ps) == 0 {
		return nil
	}
	cfgs := make([]wgtypes.PeerConfig, 0, len(ps))
	for _, p := range ps {
		cfgs = append(cfgs, peerConfig(p))
	}
	if err := l.count(l.wg.ConfigureDevice(l.opts.Name, wgtypes.Config{Peers: cfgs})); err != nil {
		return []error{fmt.Errorf("configure %d peers on %s: %w", len(cfgs), l.opts.Name, err)}
	}
	l.logEach(len(ps), "configured peers", func(level slog.Level, i int) {
		p := ps[i]
		l.opts.Logger.Log(context.Background(), level, "configured peer", "node", p.Node, "public_key", p.PublicKey, "endpoint", p.Endpoint, "prefix", p.Prefix)
	})
	return nil
}

// addRoutes adds meshd's routes to rs through link idx. It counts its
// writes but leaves the device as last read (count) to its caller: it may
// run beside a device write.
func (l *Link) addRoutes(idx int, rs []netip.Prefix) []error {
	var errs []error
	added := make([]netip.Prefix, 0, len(rs))
	for _, r := range rs {
		route := &netlink.Route{LinkIndex: idx, Dst: ipNet(r), Protocol: RouteProtocol, Family: netlink.FAMILY_V6}
		err := l.nh.RouteAdd(route)
		if err == nil {
			l.writes.Add(1)
		}
		switch {
		case errors.Is(err, unix.EEXIST):
			errs = append(errs, fmt.Errorf("add route %s: a route meshd did not install is in the way: %w", r, err))
		case err != nil:
			errs = append(errs, fmt.Errorf("add route %s: %w", r, err))
		default:
			added = append(added, r)
		}
	}
	l.logEach(len(added), "added routes", func(level slog.Level, i int) {
		l.opts.Logger.Log(context.Background(), level, "added route", "prefix", added[i], "interface", l.opts.Name)
	})
	return errs
}

// removePeers is Apply's last step: the peers to remove, in one write; it
// returns errs with its own error joined.
func (l *Link) removePeers(keys []wgtypes.Key, errs []error) error {
	if len(keys) > 0 {
		cfgs := make([]wgtypes.PeerConfig, 0, len(keys))
		for _, k := range keys {
			cfgs = append(cfgs, wgtypes.PeerConfig{PublicKey: k, Remove: true})
		}
		if err := l.count(l.wg.ConfigureDevice(l.opts.Name, wgtypes.Config{Peers: cfgs})); err != nil {
			errs = append(errs, fmt.Errorf("remove %d peers from %s: %w", len(cfgs), l.opts.Name, err))
		} else {
			l.logEach(len(keys), "removed peers", func(level slog.Level, i int) {
				l.opts.Logger.Log(context.Background(), level, "removed peer", "public_key", keys[i], "interface", l.opts.Name)
			})
		}
	}
	return errors.Join(errs...)
}

// logEachMax is the most writes of one kind Apply logs one line each for
// at info level; past it, one line counts them and each line is debug (a
// first sync of 10,000 peers is not 20,000 lines).
const logEachMax = 32

// logEach logs n writes of one kind: each at info level, or, past
// logEachMax, one info line saying how many (msg) and each at debug level.
func (l *Link) logEach(n int, msg string, each func(level slog.Level, i int)) {
	level := slog.LevelInfo
	if n > logEachMax {
		l.opts.Logger.Info(msg, "count", n, "interface", l.opts.Name)
		level = slog.LevelDebug
		if !l.opts.Logger.Enabled(context.Background(), level) {
			return
		}
	}
	for i := range n {
		each(level, i)
	}
}

// ResetPeers removes and adds back each peer in one device write, which
// drops its session and handshake state so that the next packet starts a
// fresh handshake at once. It is for after a key rotation only: a peer whose
// handshake collided with the other side's sits out WireGuard's 5 s rekey
// timeout otherwise.
func (l *Link) ResetPeers(ps []peers.Peer) error {
	if len(ps) == 0 {
		return nil
	}
	cfgs := make([]wgtypes.PeerConfig, 0, 2*len(ps))
	for _, p := range ps {
		cfgs = append(cfgs, wgtypes.PeerConfig{PublicKey: p.PublicKey, Remove: true}, peerConfig(p))
	}
	if err := l.count(l.wg.ConfigureDevice(l.opts.Name, wgtypes.Config{Peers: cfgs})); err != nil {
		return fmt.Errorf("reset %d peers on %s: %w", len(ps), l.opts.Name, err)
	}
	for _, p := range ps {
		l.opts.Logger.Info("reset peer session", "node", p.Node, "public_key", p.PublicKey)
	}
	return nil
}

func peerConfig(p peers.Peer) wgtypes.PeerConfig {
	ka := p.Keepalive
	cfg := wgtypes.PeerConfig{
		PublicKey:                   p.PublicKey,
		PersistentKeepaliveInterval: &ka,
		ReplaceAllowedIPs:           true,
		AllowedIPs:                  []net.IPNet{*ipNet(p.Prefix)},
	}
	// A peer without an endpoint (a roaming user) keeps the one WireGuard
	// learnt from its packets.
	if p.Endpoint.IsValid() {
		cfg.Endpoint = net.UDPAddrFromAddrPort(p.Endpoint)
	}
	return cfg
}

// delRoutes deletes meshd's routes rs through link idx and logs them
// (logEach). The protocol is part of each request, so the kernel refuses
// to delete a foreign route of the same destination; a route already gone
// is no error.
func (l *Link) delRoutes(idx int, rs []netip.Prefix) []error {
	var errs []error
	deleted := make([]netip.Prefix, 0, len(rs))
	for _, p := range rs {
		route := &netlink.Route{LinkIndex: idx, Dst: ipNet(p), Protocol: RouteProtocol, Family: netlink.FAMILY_V6}
		switch err := l.count(l.nh.RouteDel(route)); {
		case errors.Is(err, unix.ESRCH):
		case err != nil:
			errs = append(errs, fmt.Errorf("delete route %s: %w", p, err))
		default:
			deleted = append(deleted, p)
		}
	}
	l.logEach(len(deleted), "deleted routes", func(level slog.Level, i int) {
		l.opts.Logger.Log(context.Background(), level, "deleted route", "prefix", deleted[i], "interface", l.opts.Name)
	})
	return errs
}
