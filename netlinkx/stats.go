package netlinkx

import (
	"fmt"
	"net/netip"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// PeerStats is one peer's live state as the device reports it.
type PeerStats struct {
	PublicKey     wgtypes.Key
	Endpoint      netip.AddrPort
	AllowedIPs    []netip.Prefix
	Keepalive     time.Duration
	LastHandshake time.Time // zero: never
	RxBytes       int64
	TxBytes       int64
}

// DeviceStats is a WireGuard device's live state.
type DeviceStats struct {
	Name       string
	Type       string
	PublicKey  wgtypes.Key
	ListenPort int
	Peers      []PeerStats
}

// ReadDevice reads the named device directly from the kernel (or the
// userspace device's socket), without going through an agent. It is safe to
// call while the control loop runs: it only reads.
func ReadDevice(name string) (DeviceStats, error) {
	wg, err := wgctrl.New()
	if err != nil {
		return DeviceStats{}, fmt.Errorf("open wgctrl: %w", err)
	}
	defer wg.Close()
	d, err := wg.Device(name)
	if err != nil {
		return DeviceStats{}, fmt.Errorf("read WireGuard device %s: %w", name, err)
	}
	return deviceStats(d), nil
}

// deviceStats converts what wgctrl reports into netip values, the one
// place that does so (Observe and ReadDevice both use it).
func deviceStats(d *wgtypes.Device) DeviceStats {
	ds := DeviceStats{Name: d.Name, Type: d.Type.String(), PublicKey: d.PublicKey, ListenPort: d.ListenPort}
	for _, p := range d.Peers {
		ps := PeerStats{PublicKey: p.PublicKey, Keepalive: p.PersistentKeepaliveInterval, LastHandshake: p.LastHandshakeTime, RxBytes: p.ReceiveBytes, TxBytes: p.TransmitBytes}
		if p.Endpoint != nil {
			ap := p.Endpoint.AddrPort()
			ps.Endpoint = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		}
		for _, a := range p.AllowedIPs {
			if pfx, ok := prefixOf(a); ok {
				ps.AllowedIPs = append(ps.AllowedIPs, pfx)
			}
		}
		if ps.LastHandshake.Unix() <= 0 {
			ps.LastHandshake = time.Time{}
		}
		ds.Peers = append(ds.Peers, ps)
	}
	return ds
}
