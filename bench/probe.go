package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/internal/testlab"
)

// The probe is the one simulated node that is real: a userspace WireGuard
// device in a namespace of its own. Every event (join, rotate, endpoint,
// leave) happens to it, and whether a target's kernel holds the change is
// seen by packets: a datagram sent every millisecond from the target's
// namespace to the probe's address and echoed back comes back once the
// target's device holds the probe's current key and endpoint, and stops
// coming back once the target has removed it. A device read of 10,000
// peers takes tens of milliseconds and holds the device's lock; a packet
// takes one.
//
// The probe talks to the targets over a network of its own (a bridge in its
// namespace, a second link into each target), so its packets are not in
// the bytes counted on the targets' underlay links, which are Consul's.
const (
	probeEchoPort = 9999
	// probeNet is the probe's network; the probe is .1 on it.
	probeNetPrefix = "198.19.0."
	// probeInterval is how often a target sends a datagram during an event.
	probeInterval = time.Millisecond
	// probeSilence is how long a run of unanswered datagrams must last
	// before a removal counts as applied.
	probeSilence = 100 * time.Millisecond
)

// supernet is where every prefix of the benchmark lies; the targets route
// it into their WireGuard link (a foreign route, below meshd's own per
// prefix), so a datagram reaches the device whether or not meshd's route
// to the probe is there: the device, not the route, decides.
const supernet = "fdaa::/16"

type probe struct {
	h     *testlab.Host
	iface string
	wg    *wgctrl.Client
	echo  net.PacketConn
	links int
	port  int
	// Sim is the probe as the catalog knows it now; priv is its key.
	Sim  Sim
	priv wgtypes.Key
}

// newProbe starts the probe host, its network and its device.
func newProbe(t *testing.T, lab *testlab.Lab, bin string) *probe {
	p := &probe{h: lab.AddHost("probe"), iface: fmt.Sprintf("wb%dpr", os.Getpid()%1000), port: 40000}
	for _, argv := range [][]string{
		{"ip", "link", "add", "pbr", "type", "bridge"},
		{"ip", "addr", "add", probeNetPrefix + "1/24", "dev", "pbr"},
		{"ip", "link", "set", "pbr", "up"},
		{"sh", "-c", fmt.Sprintf("setsid %s wireguard-userspace %s 1420 >%s 2>&1 </dev/null &", bin, p.iface, filepath.Join(p.h.Dir, "wg.log"))},
	} {
		if out, err := p.h.Exec(argv...); err != nil {
			t.Fatalf("probe: %v: %v: %s", argv, err, out)
		}
	}
	t.Cleanup(func() { p.h.Exec("ip", "link", "del", p.iface) })
	testlab.Eventually(t, 20*time.Second, "probe device up", func() bool {
		_, err := p.h.Exec("wg", "show", p.iface)
		return err == nil
	})
	for _, argv := range [][]string{
		{"ip", "link", "set", p.iface, "up"},
		{"ip", "-6", "route", "add", supernet, "dev", p.iface},
	} {
		if out, err := p.h.Exec(argv...); err != nil {
			t.Fatalf("probe: %v: %v: %s", argv, err, out)
		}
	}
	var err error
	if p.wg, err = wgctrl.New(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.wg.Close() })
	if p.echo, err = testlab.ListenPacketInNetns(p.h.Netns, "udp6", fmt.Sprintf("[::]:%d", probeEchoPort)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.echo.Close() })
	go func() {
		buf := make([]byte, 64)
		for {
			n, from, err := p.echo.ReadFrom(buf)
			if err != nil {
				return
			}
			p.echo.WriteTo(buf[:n], from)
		}
	}()
	return p
}

// connect links target host h (WireGuard key pub, listening on 51820,
// owning prefix) to the probe, and returns the target's prober. addr, if
// valid, is put on the target's link first (the classic device has none).
func (p *probe) connect(t *testing.T, h *testlab.Host, iface string, pub wgtypes.Key, prefix netip.Prefix, addr netip.Addr) *prober {
	p.links++
	veth := fmt.Sprintf("p%d", p.links)
	hostAddr := fmt.Sprintf("%s%d", probeNetPrefix, p.links+1)
	cmds := [][]string{
		{"ip", "-n", p.h.Netns, "link", "add", veth, "type", "veth", "peer", "name", "eth1", "netns", h.Netns},
		{"ip", "-n", p.h.Netns, "link", "set", veth, "master", "pbr", "up"},
		{"ip", "-n", h.Netns, "addr", "add", hostAddr + "/24", "dev", "eth1"},
		{"ip", "-n", h.Netns, "link", "set", "eth1", "up"},
		{"ip", "-n", h.Netns, "link", "set", iface, "up"},
		{"ip", "-n", h.Netns, "-6", "route", "add", supernet, "dev", iface, "metric", "4096"},
	}
	if addr.IsValid() {
		cmds = append(cmds, []string{"ip", "-n", h.Netns, "addr", "add", addr.String() + "/128", "dev", iface})
	}
	for _, argv := range cmds {
		if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("probe link to %s: %v: %v: %s", h.Name, argv, err, out)
		}
	}
	ep := &net.UDPAddr{IP: net.ParseIP(hostAddr), Port: 51820}
	if err := p.wg.ConfigureDevice(p.iface, wgtypes.Config{Peers: []wgtypes.PeerConfig{{
		PublicKey: pub, Endpoint: ep, ReplaceAllowedIPs: true,
		AllowedIPs: []net.IPNet{{IP: prefix.Addr().AsSlice(), Mask: net.CIDRMask(prefix.Bits(), 128)}},
	}}}); err != nil {
		t.Fatal(err)
	}
	conn, err := testlab.ListenPacketInNetns(h.Netns, "udp6", "[::]:0")
	if err != nil {
		t.Fatal(err)
	}
	pr := &prober{conn: conn}
	t.Cleanup(func() { conn.Close() })
	go pr.receive()
	return pr
}

// become gives the probe a new identity before it joins as node i: a new
// key, a new port and the prefix of simulated node i.
func (p *probe) become(i int) error {
	s, err := NewSim(i)
	if err != nil {
		return err
	}
	old := p.Sim.Prefix
	p.Sim = s
	if err := p.rotate(); err != nil {
		return err
	}
	if err := p.move(); err != nil {
		return err
	}
	if old.IsValid() {
		if out, err := p.h.Exec("ip", "addr", "del", meshAddr(old).String()+"/128", "dev", p.iface); err != nil {
			return fmt.Errorf("probe address: %v: %s", err, out)
		}
	}
	if out, err := p.h.Exec("ip", "addr", "add", meshAddr(s.Prefix).String()+"/128", "dev", p.iface); err != nil {
		return fmt.Errorf("probe address: %v: %s", err, out)
	}
	return nil
}

// rotate gives the probe a new key, as meshd rotate-key would.
func (p *probe) rotate() error {
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return err
	}
	if err := p.wg.ConfigureDevice(p.iface, wgtypes.Config{PrivateKey: &k}); err != nil {
		return err
	}
	p.priv, p.Sim.Key = k, k.PublicKey()
	return nil
}

// move makes the probe listen on a new port: its endpoint changes.
func (p *probe) move() error {
	p.port++
	if err := p.wg.ConfigureDevice(p.iface, wgtypes.Config{ListenPort: &p.port}); err != nil {
		return err
	}
	p.Sim.Endpoint = netip.AddrPortFrom(netip.MustParseAddr(probeNetPrefix+"1"), uint16(p.port))
	return nil
}

// meshAddr is the first host address of a prefix, as meshd puts on its link.
func meshAddr(p netip.Prefix) netip.Addr { return p.Masked().Addr().Next() }

// prober sends datagrams from one target to the probe and records the
// echoes.
type prober struct {
	conn net.PacketConn

	mu    sync.Mutex
	event uint32
	sent  []time.Time // by sequence number, this event
	got   []time.Time // when its echo came back (zero: not yet)
}

func (pr *prober) receive() {
	buf := make([]byte, 64)
	for {
		n, _, err := pr.conn.ReadFrom(buf)
		if err != nil {
			return
		}
		now := time.Now()
		if n < 8 {
			continue
		}
		ev, seq := binary.BigEndian.Uint32(buf), binary.BigEndian.Uint32(buf[4:])
		pr.mu.Lock()
		if ev == pr.event && int(seq) < len(pr.got) && pr.got[seq].IsZero() {
			pr.got[seq] = now
		}
		pr.mu.Unlock()
	}
}

// measure sends a datagram to dst every probeInterval until the target's
// device shows the change and returns when it did: with reach, when the
// first echo came back; without, when the first datagram was sent that was
// never answered, nor any after it, for probeSilence.
func (pr *prober) measure(ctx context.Context, dst netip.AddrPort, reach bool) (time.Time, error) {
	pr.mu.Lock()
	pr.event++
	ev := pr.event
	pr.sent, pr.got = pr.sent[:0], pr.got[:0]
	pr.mu.Unlock()
	to := net.UDPAddrFromAddrPort(dst)
	tick := time.NewTicker(probeInterval)
	defer tick.Stop()
	var msg [8]byte
	for seq := uint32(0); ; seq++ {
		binary.BigEndian.PutUint32(msg[:], ev)
		binary.BigEndian.PutUint32(msg[4:], seq)
		pr.mu.Lock()
		pr.sent = append(pr.sent, time.Now())
		pr.got = append(pr.got, time.Time{})
		pr.mu.Unlock()
		pr.conn.WriteTo(msg[:], to) // an unreachable target is what is measured
		if at, ok, err := pr.result(reach); ok || err != nil {
			return at, err
		}
		select {
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-tick.C:
		}
	}
}

// result reports whether the measurement is done, and when the change
// showed.
func (pr *prober) result(reach bool) (time.Time, bool, error) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if reach {
		var first time.Time
		for _, g := range pr.got {
			if !g.IsZero() && (first.IsZero() || g.Before(first)) {
				first = g
			}
		}
		return first, !first.IsZero(), nil
	}
	last := -1
	for i, g := range pr.got {
		if !g.IsZero() {
			last = i
		}
	}
	next := last + 1
	if next >= len(pr.sent) || time.Since(pr.sent[next]) < probeSilence {
		return time.Time{}, false, nil
	}
	if last < 0 {
		// Never answered: the target had dropped the peer by the first
		// datagram. A leave is applied from the whole list, whose watch
		// can wake before the writer's acknowledgement arrives; the
		// previous event showed this target reaching the probe, and the
		// device is read afterwards (verify), so the removal is real.
		return pr.sent[0], true, nil
	}
	return pr.sent[next], true, nil
}
