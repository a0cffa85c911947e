package netlinkx_test

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/internal/testlab"
	"meshd.dev/meshd/netlinkx"
	"meshd.dev/meshd/peers"
)

func TestMain(m *testing.M) { testlab.Main(m) }

var netipOpts = cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{}, netip.AddrPort{})

func mustKey(t *testing.T) wgtypes.Key {
	t.Helper()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func openLink(t *testing.T, name string) (*netlinkx.Link, wgtypes.Key) {
	t.Helper()
	key := mustKey(t)
	l := testlab.OpenLink(t, netlinkx.Options{Name: name, MTU: 1400, ListenPort: 51821, PrivateKey: key,
		Address: netip.MustParseAddr("fdaa:0:1::1")})
	return l, key
}

func TestDetectMode(t *testing.T) {
	tun := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: "t0"}, Mode: netlink.TUNTAP_MODE_TUN}
	tests := []struct {
		name    string
		link    netlink.Link
		uapi    bool
		want    netlinkx.Mode
		wantErr error
	}{
		{"kernel wireguard", &netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: "w0"}}, false, netlinkx.ModeKernel, nil},
		{"tun with a WireGuard process", tun, true, netlinkx.ModeUserspace, nil},
		{"tun without one", tun, false, "", errors.New("stale")},
		{"dummy", &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: "d0"}}, true, "", netlinkx.ErrNotWireGuard},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := netlinkx.DetectMode(tt.link, tt.uapi)
			if got != tt.want {
				t.Errorf("mode = %q, want %q", got, tt.want)
			}
			switch {
			case tt.wantErr == nil && err != nil:
				t.Errorf("unexpected error %v", err)
			case tt.wantErr != nil && err == nil:
				t.Errorf("no error, want one")
			case errors.Is(tt.wantErr, netlinkx.ErrNotWireGuard) && !errors.Is(err, netlinkx.ErrNotWireGuard):
				t.Errorf("error %v, want ErrNotWireGuard", err)
			}
		})
	}
}

// TestEnsureUserspace runs the fallback this machine needs: no wireguard
// kernel module, so Ensure starts a userspace device. Where the module
// exists the link must be a kernel one instead.
func TestEnsureUserspace(t *testing.T) {
	testlab.RequireRoot(t)
	l, key := openLink(t, "wgt0")
	if err := l.Ensure(); err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	_, modErr := os.Stat("/sys/module/wireguard")
	wantMode := netlinkx.ModeUserspace
	if modErr == nil {
		wantMode = netlinkx.ModeKernel
	}
	if l.Mode() != wantMode {
		t.Fatalf("mode = %q, want %q", l.Mode(), wantMode)
	}
	link, err := netlink.LinkByName("wgt0")
	if err != nil {
		t.Fatal(err)
	}
	if link.Attrs().MTU != 1400 {
		t.Errorf("MTU = %d, want 1400", link.Attrs().MTU)
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		t.Error("link is not up")
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V6)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range addrs {
		if a.IP.IsLinkLocalUnicast() {
			continue // the kernel's own, on tun devices
		}
		got = append(got, a.IPNet.String())
	}
	if diff := cmp.Diff([]string{"fdaa:0:1::1/128"}, got, cmpopts.SortSlices(func(a, b string) bool { return a < b })); diff != "" {
		t.Errorf("addresses (-want +got):\n%s", diff)
	}
	wg, err := wgctrl.New()
	if err != nil {
		t.Fatal(err)
	}
	defer wg.Close()
	dev, err := wg.Device("wgt0")
	if err != nil {
		t.Fatal(err)
	}
	if dev.PrivateKey != key || dev.ListenPort != 51821 {
		t.Errorf("device key/port = %s/%d, want the configured ones", dev.PublicKey, dev.ListenPort)
	}

	// A second Ensure, and an Ensure by a fresh Link as after a restart,
	// adopt the device and write nothing.
	before := l.Writes()
	if err := l.Ensure(); err != nil {
		t.Fatal(err)
	}
	if n := l.Writes() - before; n != 0 {
		t.Errorf("second Ensure made %d writes, want 0", n)
	}
	l2, err := netlinkx.Open(netlinkx.Options{Name: "wgt0", MTU: 1400, ListenPort: 51821, PrivateKey: key,
		Address: netip.MustParseAddr("fdaa:0:1::1")})
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	if err := l2.Ensure(); err != nil {
		t.Fatalf("Ensure after restart: %v", err)
	}
	if l2.Writes() != 0 || l2.Mode() != wantMode {
		t.Errorf("adopting Ensure: %d writes, mode %q; want 0 writes, mode %q", l2.Writes(), l2.Mode(), wantMode)
	}
	after, err := netlink.LinkByName("wgt0")
	if err != nil || after.Attrs().Index != link.Attrs().Index {
		t.Errorf("link was recreated (index %d -> %v, err %v)", link.Attrs().Index, after, err)
	}
}

// TestWant: the wireguard setting picks the backend of a new link. Where the
// kernel has no module, kernel fails and creates nothing (inside scripts/vm,
// where it has one, it makes a kernel link); userspace never tries the kernel.
func TestWant(t *testing.T) {
	testlab.RequireRoot(t)
	_, modErr := os.Stat("/sys/module/wireguard")
	kernel := modErr == nil
	t.Run("userspace", func(t *testing.T) {
		l := testlab.OpenLink(t, netlinkx.Options{Name: "wgw0", MTU: 1420, ListenPort: 51831, Want: netlinkx.ModeUserspace})
		if err := l.Ensure(); err != nil {
			t.Fatalf("Ensure: %v", err)
		}
		link, err := netlink.LinkByName("wgw0")
		if err != nil {
			t.Fatal(err)
		}
		if l.Mode() != netlinkx.ModeUserspace || link.Type() != "tuntap" {
			t.Errorf("mode %q, link type %q; want userspace on a tun device", l.Mode(), link.Type())
		}
	})
	t.Run("kernel", func(t *testing.T) {
		l := testlab.OpenLink(t, netlinkx.Options{Name: "wgw1", MTU: 1420, ListenPort: 51832, Want: netlinkx.ModeKernel})
		err := l.Ensure()
		link, lerr := netlink.LinkByName("wgw1")
		if kernel {
			if err != nil || l.Mode() != netlinkx.ModeKernel || lerr != nil || link.Type() != "wireguard" {
				t.Errorf("Ensure: %v; mode %q, link %v (%v); want a kernel wireguard link", err, l.Mode(), link, lerr)
			}
			return
		}
		if !errors.Is(err, netlinkx.ErrKernelUnsupported) {
			t.Errorf("Ensure without the module: %v, want ErrKernelUnsupported", err)
		}
		if lerr == nil {
			t.Errorf("a failed kernel Ensure left a %q link behind", link.Type())
		}
	})
}

func TestApplyObserveIncremental(t *testing.T) {
	testlab.RequireRoot(t)
	l, _ := openLink(t, "wgt1")
	if err := l.Ensure(); err != nil {
		t.Fatal(err)
	}
	p := func(n byte) peers.Peer {
		return peers.Peer{
			Node:      "h" + string('0'+n),
			PublicKey: mustKey(t).PublicKey(),
			Endpoint:  netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 0, n}), 51820),
			Prefix:    netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0xaa, 0, 0, 0, n}), 48),
		}
	}
	a, b, c := p(2), p(3), p(4)

	// A foreign route to a mesh prefix, on another link, that meshd must
	// never list or delete.
	dummy := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "foreign0"}, PeerName: "foreign1"}
	if err := netlink.LinkAdd(dummy); err != nil {
		t.Fatal(err)
	}
	defer netlink.LinkDel(dummy)
	netlink.LinkSetUp(dummy)
	foreign := &netlink.Route{LinkIndex: dummy.Attrs().Index, Dst: &net.IPNet{IP: net.ParseIP("fdaa:0:9::"), Mask: net.CIDRMask(48, 128)}, Protocol: 4}
	if err := netlink.RouteAdd(foreign); err != nil {
		t.Fatal(err)
	}

	reconcile := func(desired []peers.Peer) (peers.Plan, uint64) {
		t.Helper()
		obs, err := l.Observe()
		if err != nil {
			t.Fatal(err)
		}
		plan := peers.Diff(desired, obs, peers.Removal{Now: time.Now()})
		before := l.Writes()
		if err := l.Apply(plan); err != nil {
			t.Fatalf("Apply: %v", err)
		}
		return plan, l.Writes() - before
	}
	if _, n := reconcile([]peers.Peer{a, b}); n != 3 {
		t.Errorf("first apply made %d writes, want 3 (one peer configuration, two routes)", n)
	}
	obs, err := l.Observe()
	if err != nil {
		t.Fatal(err)
	}
	want := peers.Observed{
		Peers: []peers.KernelPeer{
			{PublicKey: a.PublicKey, Endpoint: a.Endpoint, AllowedIPs: []netip.Prefix{a.Prefix}},
			{PublicKey: b.PublicKey, Endpoint: b.Endpoint, AllowedIPs: []netip.Prefix{b.Prefix}},
		},
		Routes: []netip.Prefix{a.Prefix, b.Prefix},
	}
	sortPeers := cmpopts.SortSlices(func(x, y peers.KernelPeer) bool { return x.Endpoint.Compare(y.Endpoint) < 0 })
	sortPrefixes := cmpopts.SortSlices(func(x, y netip.Prefix) bool { return x.Compare(y) < 0 })
	if diff := cmp.Diff(want, obs, netipOpts, sortPeers, sortPrefixes); diff != "" {
		t.Errorf("Observe after apply (-want +got):\n%s", diff)
	}

	// Nothing changed: the plan is empty and nothing is written.
	if plan, n := reconcile([]peers.Peer{a, b}); !plan.Empty() || n != 0 {
		t.Errorf("no-op reconcile: plan %+v, %d writes; want empty and 0", plan, n)
	}

	// One peer changes its endpoint, one is added, one removed: only those
	// are written.
	b.Endpoint = netip.MustParseAddrPort("198.18.1.3:51820")
	plan, n := reconcile([]peers.Peer{b, c})
	if len(plan.Upsert) != 2 || len(plan.Remove) != 1 || n != 4 {
		t.Errorf("incremental apply: plan %+v, %d writes; want 2 upserts, 1 removal, 4 writes", plan, n)
	}
	obs, err = l.Observe()
	if err != nil {
		t.Fatal(err)
	}
	want = peers.Observed{
		Peers: []peers.KernelPeer{
			{PublicKey: b.PublicKey, Endpoint: b.Endpoint, AllowedIPs: []netip.Prefix{b.Prefix}},
			{PublicKey: c.PublicKey, Endpoint: c.Endpoint, AllowedIPs: []netip.Prefix{c.Prefix}},
		},
		Routes: []netip.Prefix{b.Prefix, c.Prefix},
	}
	if diff := cmp.Diff(want, obs, netipOpts, sortPeers, sortPrefixes); diff != "" {
		t.Errorf("Observe after incremental apply (-want +got):\n%s", diff)
	}

	// Resetting peers (after a key rotation) keeps their configuration and
	// is one write.
	before := l.Writes()
	if err := l.ResetPeers([]peers.Peer{b, c}); err != nil {
		t.Fatal(err)
	}
	if n := l.Writes() - before; n != 1 {
		t.Errorf("ResetPeers made %d writes, want 1", n)
	}
	if plan, n := reconcile([]peers.Peer{b, c}); !plan.Empty() || n != 0 {
		t.Errorf("after ResetPeers the kernel differs: plan %+v, %d writes", plan, n)
	}

	// Removing the link takes meshd's routes but not the foreign one.
	if err := l.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := netlink.LinkByName("wgt1"); err == nil {
		t.Error("link still exists after Remove")
	}
	rs, err := netlink.RouteListFiltered(netlink.FAMILY_V6, &netlink.Route{LinkIndex: dummy.Attrs().Index}, netlink.RT_FILTER_OIF)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range rs {
		if r.Dst != nil && r.Dst.String() == "fdaa:0:9::/48" {
			found = true
		}
	}
	if !found {
		t.Error("foreign route to fdaa:0:9::/48 is gone")
	}
}

// TestApplyManyAdds checks a plan that only adds, and many (a first
// sync's write: the routes go in beside the device's write): every peer
// and route is in the kernel after it, each counted once, and a route in
// the way is reported while the rest is written.
func TestApplyManyAdds(t *testing.T) {
	testlab.RequireRoot(t)
	l, _ := openLink(t, "wgt3")
	if err := l.Ensure(); err != nil {
		t.Fatal(err)
	}
	link, err := netlink.LinkByName("wgt3")
	if err != nil {
		t.Fatal(err)
	}
	const n = 600
	var ps []peers.Peer
	var want peers.Observed
	for i := range n {
		p := peers.Peer{
			Node:      fmt.Sprintf("h%d", i),
			PublicKey: mustKey(t).PublicKey(),
			Endpoint:  netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 51820),
			Prefix:    netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0xaa, 0, 1, byte(i >> 8), byte(i)}), 48),
		}
		ps = append(ps, p)
		want.Peers = append(want.Peers, peers.KernelPeer{PublicKey: p.PublicKey, Endpoint: p.Endpoint, AllowedIPs: []netip.Prefix{p.Prefix}})
		want.Routes = append(want.Routes, p.Prefix)
	}
	// A route meshd did not install, in the way of the last peer's.
	last := ps[n-1].Prefix
	foreign := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: &net.IPNet{IP: last.Addr().AsSlice(), Mask: net.CIDRMask(48, 128)}, Protocol: 4}
	if err := netlink.RouteAdd(foreign); err != nil {
		t.Fatal(err)
	}
	obs, err := l.Observe()
	if err != nil {
		t.Fatal(err)
	}
	plan := peers.Diff(ps, obs, peers.Removal{Now: time.Now()})
	if len(plan.Upsert) != n || len(plan.AddRoutes) != n || len(plan.Remove)+len(plan.DelRoutes) != 0 {
		t.Fatalf("plan: %d upserts, %d routes to add, %d removals, %d routes to delete; want %d, %d, 0, 0",
			len(plan.Upsert), len(plan.AddRoutes), len(plan.Remove), len(plan.DelRoutes), n, n)
	}
	before := l.Writes()
	err = l.Apply(plan)
	if err == nil || !strings.Contains(err.Error(), "add route "+last.String()+": a route meshd did not install is in the way") {
		t.Errorf("Apply: %v; want the route in the way of %s reported", err, last)
	}
	if got := l.Writes() - before; got != n {
		t.Errorf("Apply made %d writes, want %d (one peer configuration, %d routes)", got, n, n-1)
	}
	if obs, err = l.Observe(); err != nil {
		t.Fatal(err)
	}
	want.Routes = want.Routes[:n-1] // the foreign route is not meshd's
	sortPeers := cmpopts.SortSlices(func(x, y peers.KernelPeer) bool { return x.Endpoint.Compare(y.Endpoint) < 0 })
	sortPrefixes := cmpopts.SortSlices(func(x, y netip.Prefix) bool { return x.Compare(y) < 0 })
	if diff := cmp.Diff(want, obs, netipOpts, sortPeers, sortPrefixes); diff != "" {
		t.Errorf("Observe after a plan of %d adds (-want +got):\n%s", n, diff)
	}
}

// TestRemoveEndsUserspaceProcess checks that deleting the link, which is
// what meshd leave does, also ends the detached device process.
func TestRemoveEndsUserspaceProcess(t *testing.T) {
	testlab.RequireRoot(t)
	l, _ := openLink(t, "wgt2")
	if err := l.Ensure(); err != nil {
		t.Fatal(err)
	}
	if l.Mode() == netlinkx.ModeKernel {
		if err := l.Remove(); err != nil {
			t.Fatal(err)
		}
		if _, err := netlink.LinkByName("wgt2"); err == nil {
			t.Fatal("kernel link still exists after Remove")
		}
		return
	}
	sock := netlinkx.UAPISocket("wgt2")
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("UAPI socket: %v", err)
	}
	if err := l.Remove(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(sock); errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("UAPI socket still there 5s after the link was deleted: the device process did not end")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestUserspaceLogCapped: a userspace device process started with a log
// keeps it capped: a log already at the cap is rotated to .1 and the
// process's own lines go to a fresh one.
func TestUserspaceLogCapped(t *testing.T) {
	testlab.RequireRoot(t)
	path := filepath.Join(t.TempDir(), "userspace-wgcap0.log")
	if err := os.WriteFile(path, bytes.Repeat([]byte("x"), netlinkx.MaxUserspaceLog), 0o600); err != nil {
		t.Fatal(err)
	}
	l := testlab.OpenLink(t, netlinkx.Options{Name: "wgcap0", MTU: 1420, ListenPort: 51829, Want: netlinkx.ModeUserspace,
		StartUserspace: netlinkx.UserspaceStarter(testlab.UserspaceArgv(), path)})
	if err := l.Ensure(); err != nil {
		t.Fatal(err)
	}
	testlab.Eventually(t, 10*time.Second, "the device's first line in a fresh log", func() bool {
		b, _ := os.ReadFile(path)
		return bytes.Contains(b, []byte("userspace device up")) && len(b) < 4096
	})
	if st, err := os.Stat(path + ".1"); err != nil || st.Size() != netlinkx.MaxUserspaceLog {
		t.Errorf("the full log was not kept as .1: %v", err)
	}
}
