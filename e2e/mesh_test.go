package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/agent"
	"meshd.dev/meshd/control"
	"meshd.dev/meshd/gateway"
	"meshd.dev/meshd/internal/testlab"
	"meshd.dev/meshd/internal/trusttest"
	"meshd.dev/meshd/netlinkx"
)

var (
	buildOnce sync.Once
	meshdBin  string
	buildErr  error
)

// meshd builds the binary under test once, with the race detector on, so
// that races in the real control loop fail the suite.
func meshd(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		if bin := os.Getenv(meshdBinEnv); bin != "" {
			meshdBin = bin
			return
		}
		dir, err := os.MkdirTemp("", "meshd-e2e-")
		if err != nil {
			buildErr = err
			return
		}
		meshdBin = filepath.Join(dir, "meshd")
		cmd := exec.Command("go", "build", "-race", "-o", meshdBin, "./cmd/meshd")
		cmd.Dir = testlab.ModuleRoot(t)
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v: %s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return meshdBin
}

// node is one mesh host: a namespace with its Consul client agent and meshd.
type node struct {
	*testlab.Host
	n      int
	iface  string
	prefix netip.Prefix
	config string
	sock   string
	proc   *testlab.Proc
	// args are extra flags for meshd run.
	args []string
	// mode is the WireGuard mode its link must have (suiteMode unless
	// the test configures the node otherwise).
	mode netlinkx.Mode
}

func (n *node) meshAddr() netip.Addr { return n.prefix.Addr().Next() }

// newNode adds host hN with a Consul client agent joined to servers and a
// meshd configuration; extra is YAML appended to it (keys the base
// configuration has may not be repeated). The base reads the whole list
// every 3 s (catalog.full_read_interval), so that what an attacker writes
// without a hint shows in status within the tests' waits; extra with a
// catalog section of its own replaces that (TestMissedHints runs on hints
// alone).
func newNode(t *testing.T, lab *testlab.Lab, servers []*testlab.Consul, n int, extra string) *node {
	t.Helper()
	h := lab.AddHost(fmt.Sprintf("h%d", n))
	h.StartConsulClient(servers...)
	nd := &node{
		Host:   h,
		n:      n,
		iface:  fmt.Sprintf("wm%dh%d", os.Getpid()%10000, n),
		prefix: netip.MustParsePrefix(fmt.Sprintf("fdaa:0:%x::/48", n)),
		config: filepath.Join(h.Dir, "meshd.yaml"),
		sock:   filepath.Join(h.Dir, "meshd.sock"),
		mode:   suiteMode(),
	}
	cfg := fmt.Sprintf(`node_name: %s
interface: %s
listen_port: 51820
endpoint: %s:51820
prefix: %s
state_dir: %s
status_socket: %s
resync_interval: 1s
log_level: debug
consul:
  address: 127.0.0.1:8500
trust:
  authorities: %s
`, h.Name, nd.iface, h.Addr, nd.prefix, filepath.Join(h.Dir, "state"), nd.sock, trusttest.PublicKey()) + extra
	if !strings.Contains(extra, "catalog:") {
		cfg += "catalog:\n  full_read_interval: 3s\n"
	}
	if err := os.WriteFile(nd.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	// The host's identity and credential, as meshd init --authority-key
	// writes them (TestACL goes through init and authority sign).
	var roles []string
	if strings.Contains(extra, "gateway:\n  enabled: true") {
		roles = []string{gateway.Tag}
	}
	trusttest.Provision(t, trusttest.Authority(), filepath.Join(h.Dir, "state"), h.Name, nd.prefix.String(), "", roles...)
	t.Cleanup(func() {
		if t.Failed() && nd.proc != nil {
			t.Logf("meshd log of %s:\n%s", h.Name, tail(nd.proc.Log(), 60))
		}
	})
	return nd
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (n *node) start(t *testing.T) {
	t.Helper()
	n.proc = n.Start("meshd.log", append([]string{meshd(t), "run", "--config", n.config}, n.args...)...)
}

func (n *node) status(t *testing.T) (agent.Status, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var st agent.Status
	err := control.Status(ctx, n.sock, &st)
	return st, err
}

// device reads the node's WireGuard device directly, as the kernel (or the
// userspace device) has it, not as meshd reports it.
func (n *node) device(t *testing.T) (*wgtypes.Device, error) {
	t.Helper()
	return deviceIn(n.Netns, n.iface)
}

// publicKey is the node's key as its device has it.
func (n *node) publicKey(t *testing.T) wgtypes.Key {
	t.Helper()
	var key wgtypes.Key
	testlab.Eventually(t, 30*time.Second, n.Name+"'s device has a key", func() bool {
		d, err := n.device(t)
		if err != nil {
			return false
		}
		// Until meshd sets the private key, wgctrl derives a public key
		// from the zero key.
		key = d.PublicKey
		return d.PrivateKey != wgtypes.Key{}
	})
	return key
}

// hasPeer reports whether n's device holds key with the given prefix.
func (n *node) hasPeer(t *testing.T, key wgtypes.Key, prefix netip.Prefix) bool {
	d, err := n.device(t)
	if err != nil {
		return false
	}
	for _, p := range d.Peers {
		if p.PublicKey == key {
			return len(p.AllowedIPs) == 1 && p.AllowedIPs[0].String() == prefix.String()
		}
	}
	return false
}

// meshRoutes lists the routes meshd tagged in n's namespace.
func (n *node) meshRoutes(t *testing.T) string {
	t.Helper()
	out, err := n.Exec("ip", "-6", "route", "show", "proto", "77")
	if err != nil {
		t.Fatalf("ip route in %s: %v: %s", n.Name, err, out)
	}
	return out
}

// pingAll checks that every node reaches every other node's mesh address.
func pingAll(t *testing.T, nodes []*node) {
	t.Helper()
	for _, a := range nodes {
		for _, b := range nodes {
			if a == b {
				continue
			}
			testlab.Eventually(t, 20*time.Second, fmt.Sprintf("%s pings %s at %s over the mesh", a.Name, b.Name, b.meshAddr()), func() bool {
				return a.Ping(b.meshAddr())
			})
		}
	}
}

// converged waits until every node's device holds exactly the other nodes
// as peers, each with its prefix, and a tagged route for each.
func converged(t *testing.T, nodes []*node) {
	t.Helper()
	for _, n := range nodes {
		n.publicKey(t) // waits for the link
		checkLink(t, n.Host, n.iface, n.mode)
	}
	for _, a := range nodes {
		holds(t, a, nodes, 30*time.Second)
	}
}

// holds waits (at most within) until a's device holds exactly the other
// nodes of nodes as peers, each with its prefix, and a tagged route for
// each.
func holds(t *testing.T, a *node, nodes []*node, within time.Duration) {
	t.Helper()
	keys := map[*node]wgtypes.Key{}
	for _, n := range nodes {
		keys[n] = n.publicKey(t)
	}
	var why string
	testlab.Eventually(t, within, a.Name+" holds every other node as a peer with a route", func() bool {
		d, err := a.device(t)
		if err != nil {
			why = err.Error()
			return false
		}
		if len(d.Peers) != len(nodes)-1 {
			why = fmt.Sprintf("%d peers", len(d.Peers))
			return false
		}
		routes := a.meshRoutes(t)
		for _, b := range nodes {
			if a == b {
				continue
			}
			if !a.hasPeer(t, keys[b], b.prefix) {
				why = fmt.Sprintf("no peer %s (%s %s); peers:", b.Name, keys[b], b.prefix)
				for _, p := range d.Peers {
					why += fmt.Sprintf(" %s %v", p.PublicKey, p.AllowedIPs)
				}
				return false
			}
			if !strings.Contains(routes, b.prefix.String()) {
				why = "no route to " + b.Name + " in " + routes
				return false
			}
		}
		return true
	}, &why)
}

func checkNoRace(t *testing.T, nodes []*node) {
	t.Helper()
	for _, n := range nodes {
		if n.proc != nil && strings.Contains(n.proc.Log(), "DATA RACE") {
			t.Errorf("meshd on %s reported a data race:\n%s", n.Name, n.proc.Log())
		}
	}
}

// startHosts starts hosts h1..hn, each with extra appended to its
// configuration, with a Consul client agent each on one Consul server,
// and waits until they are converged; at the end, every host's log is
// checked for data races.
func startHosts(t *testing.T, n int, extra string) (*testlab.Lab, *testlab.Consul, []*node) {
	t.Helper()
	lab := testlab.NewLab(t)
	server := lab.StartConsulServer("consul")
	var nodes []*node
	for i := 1; i <= n; i++ {
		nodes = append(nodes, newNode(t, lab, []*testlab.Consul{server}, i, extra))
	}
	startAll(t, nodes...)
	return lab, server, nodes
}

// startAll starts meshd on every node, checks their logs for data races
// when the test ends, and waits until they are converged.
func startAll(t *testing.T, nodes ...*node) {
	t.Helper()
	for _, n := range nodes {
		n.start(t)
	}
	t.Cleanup(func() { checkNoRace(t, nodes) })
	converged(t, nodes)
}

// TestMesh is the walking skeleton end to end: three hosts converge and
// ping each other over WireGuard, a fourth joins, one leaves.
func TestMesh(t *testing.T) {
	lab, server, nodes := startHosts(t, 3, "removal_grace: 2s\n")
	pingAll(t, nodes)

	t.Run("no-op reconciles write nothing", func(t *testing.T) {
		noopReconcilesWriteNothing(t, nodes[0])
	})

	t.Run("a fourth host joins", func(t *testing.T) {
		h4 := newNode(t, lab, []*testlab.Consul{server}, 4, "removal_grace: 2s\n")
		h4.start(t)
		nodes = append(nodes, h4)
		converged(t, nodes)
		pingAll(t, nodes)
	})

	t.Run("key rotation", func(t *testing.T) {
		rotateKey(t, nodes[0], nodes[1:])
	})

	t.Run("SIGTERM keeps link, peers and routes; restart adopts them", func(t *testing.T) {
		n := nodes[0]
		before, err := n.device(t)
		if err != nil {
			t.Fatal(err)
		}
		link, err := linkIndex(n)
		if err != nil {
			t.Fatal(err)
		}
		routes := n.meshRoutes(t)
		n.proc.Signal(syscall.SIGTERM)
		if exited, err := n.proc.Wait(10 * time.Second); !exited || err != nil {
			t.Fatalf("meshd did not exit cleanly on SIGTERM: exited=%v err=%v", exited, err)
		}
		after, err := n.device(t)
		if err != nil {
			t.Fatalf("device gone after SIGTERM: %v", err)
		}
		if len(after.Peers) != len(before.Peers) || n.meshRoutes(t) != routes {
			t.Errorf("SIGTERM changed the kernel: %d -> %d peers, routes %q -> %q", len(before.Peers), len(after.Peers), routes, n.meshRoutes(t))
		}
		pingAll(t, nodes) // the data plane works with the agent stopped
		n.start(t)
		var st agent.Status
		testlab.Eventually(t, 30*time.Second, "restarted meshd reconciles", func() bool {
			st, err = n.status(t)
			return err == nil && st.Converged && len(st.Peers) == len(nodes)-1
		})
		if st.KernelWrites != 0 {
			t.Errorf("restarted meshd made %d kernel writes, want 0 (adopt, not rewrite)", st.KernelWrites)
		}
		if idx, err := linkIndex(n); err != nil || idx != link {
			t.Errorf("link index %d -> %d (%v): the link was recreated", link, idx, err)
		}
		pingAll(t, nodes)
	})

	t.Run("a host leaves", func(t *testing.T) {
		leaver, rest := nodes[1], append([]*node{nodes[0]}, nodes[2:]...)
		key := leaver.publicKey(t)
		out, err := leaver.Exec(meshd(t), "leave", "--config", leaver.config)
		if err != nil {
			t.Fatalf("meshd leave: %v: %s", err, out)
		}
		if !strings.Contains(out, "left the mesh") {
			t.Errorf("meshd leave printed %q", out)
		}
		if exited, err := leaver.proc.Wait(10 * time.Second); !exited || err != nil {
			t.Errorf("agent after leave: exited=%v err=%v, want a clean exit", exited, err)
		}
		if _, err := leaver.device(t); err == nil {
			t.Error("the leaver's WireGuard device still exists")
		}
		if r := leaver.meshRoutes(t); strings.TrimSpace(r) != "" {
			t.Errorf("the leaver still has mesh routes:\n%s", r)
		}
		for _, n := range rest {
			testlab.Eventually(t, 20*time.Second, n.Name+" removes the leaver's peer and route", func() bool {
				d, err := n.device(t)
				if err != nil {
					return false
				}
				for _, p := range d.Peers {
					if p.PublicKey == key {
						return false
					}
				}
				return !strings.Contains(n.meshRoutes(t), leaver.prefix.String())
			})
		}
		converged(t, rest)
		pingAll(t, rest)
	})
}

func linkIndex(n *node) (int, error) {
	h, err := netns.GetFromName(n.Netns)
	if err != nil {
		return 0, err
	}
	defer h.Close()
	nh, err := netlink.NewHandleAt(h)
	if err != nil {
		return 0, err
	}
	defer nh.Close()
	l, err := nh.LinkByName(n.iface)
	if err != nil {
		return 0, err
	}
	return l.Attrs().Index, nil
}

// noopReconcilesWriteNothing watches a converged node through several
// resyncs: its kernel write counter must not move, and the kernel itself
// must report no link, address or route change in its namespace.
func noopReconcilesWriteNothing(t *testing.T, n *node) {
	h, err := netns.GetFromName(n.Netns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	done := make(chan struct{})
	defer close(done)
	routes := make(chan netlink.RouteUpdate, 100)
	addrs := make(chan netlink.AddrUpdate, 100)
	links := make(chan netlink.LinkUpdate, 100)
	if err := netlink.RouteSubscribeWithOptions(routes, done, netlink.RouteSubscribeOptions{Namespace: &h}); err != nil {
		t.Fatal(err)
	}
	if err := netlink.AddrSubscribeWithOptions(addrs, done, netlink.AddrSubscribeOptions{Namespace: &h}); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{Namespace: &h}); err != nil {
		t.Fatal(err)
	}
	before, err := n.status(t)
	if err != nil {
		t.Fatal(err)
	}
	registrations := strings.Count(n.proc.Log(), "msg=registered")
	// resync_interval is 1s: wait for at least three more reconciles.
	testlab.Eventually(t, 20*time.Second, "three resyncs", func() bool {
		st, err := n.status(t)
		return err == nil && st.LastReconcile.Sub(before.LastReconcile) >= 3*time.Second
	})
	after, err := n.status(t)
	if err != nil {
		t.Fatal(err)
	}
	if !after.Converged {
		t.Errorf("status not converged: %+v", after)
	}
	// A catalog write would wake every watcher in the fleet.
	if r := strings.Count(n.proc.Log(), "msg=registered"); r != registrations {
		t.Errorf("meshd registered again %d times during no-op reconciles", r-registrations)
	}
	if after.KernelWrites != before.KernelWrites {
		t.Errorf("kernel writes went from %d to %d during no-op reconciles", before.KernelWrites, after.KernelWrites)
	}
	// The kernel makes changes of its own on a new link (the IPv6
	// link-local address finishing duplicate address detection, and its
	// route); meshd's writes are tagged routes, the mesh address, and the
	// link itself.
	for len(routes) > 0 {
		if u := <-routes; u.Protocol == netlinkx.RouteProtocol {
			t.Errorf("the kernel reported a change to meshd's route %v during no-op reconciles", u.Dst)
		}
	}
	for len(addrs) > 0 {
		if u := <-addrs; !u.LinkAddress.IP.IsLinkLocalUnicast() {
			t.Errorf("the kernel reported a change to address %v during no-op reconciles", u.LinkAddress.String())
		}
	}
	for len(links) > 0 {
		if u := <-links; u.Attrs().Name == n.iface {
			t.Errorf("the kernel reported a change to link %s during no-op reconciles: %+v", n.iface, u.Attrs())
		}
	}
}

// rotateKey runs meshd rotate-key on n: every other host comes to hold n's
// new key (and not the old one) and pings n again; how long that took, and
// the echoes lost meanwhile (one every 20ms), are logged: that is the
// disruption of a rotation.
func rotateKey(t *testing.T, n *node, others []*node) {
	oldKey := n.publicKey(t)
	var done time.Time
	var newKey wgtypes.Key
	sent, got := pingCount(t, others[0], n, 20*time.Millisecond, 20*time.Second, func() {
		time.Sleep(time.Second)
		out, err := n.Exec(meshd(t), "rotate-key", "--config", n.config)
		if err != nil {
			t.Fatalf("meshd rotate-key: %v: %s", err, out)
		}
		done = time.Now()
		d, err := n.device(t)
		if err != nil {
			t.Fatal(err)
		}
		newKey = d.PublicKey
		if newKey == oldKey || !strings.Contains(out, newKey.String()) {
			t.Fatalf("device key %s after rotate-key (old %s); command said %q", newKey, oldKey, out)
		}
		// Every other host holds the new key only and pings n within 2 s
		// of rotate-key returning (issue #4); Eventually polls longer so
		// that a miss reports how long it took.
		for _, o := range others {
			testlab.Eventually(t, 15*time.Second, o.Name+" holds the new key only and pings "+n.Name, func() bool {
				d, err := o.device(t)
				if err != nil {
					return false
				}
				for _, p := range d.Peers {
					if p.PublicKey == oldKey {
						return false
					}
				}
				return o.hasPeer(t, newKey, n.prefix) && o.Ping(n.meshAddr())
			})
		}
		took := time.Since(done)
		t.Logf("all %d peers hold the new key and reach %s %s after rotate-key returned", len(others), n.Name, took.Round(time.Millisecond))
		if took > budget(2*time.Second) {
			t.Errorf("rotation took %s to converge on every peer, want within %s", took.Round(time.Millisecond), budget(2*time.Second))
		}
	})
	t.Logf("rotation disruption: %d of %d echoes lost (20ms apart) from %s to %s", sent-got, sent, others[0].Name, n.Name)
	if _, err := os.Stat(filepath.Join(n.Dir, "state", "private.key.old")); !os.IsNotExist(err) {
		t.Errorf("the old key file is still there after the rotation was published: %v", err)
	}
	st, err := n.status(t)
	if err != nil || st.PublicKey != newKey.String() {
		t.Errorf("status public key %q (%v), want %s", st.PublicKey, err, newKey)
	}
}
