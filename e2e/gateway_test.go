package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/consul/api"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/gateway"
	"meshd.dev/meshd/internal/testlab"
	"meshd.dev/meshd/internal/trusttest"
	"meshd.dev/meshd/peers"
)

// laptop is an end user's machine: a namespace on the underlay with nothing
// but wg-quick and the configuration `gateway peer create` printed.
type laptop struct {
	*testlab.Host
	iface string
	conf  string
	addr  netip.Addr // its address on the gateway, where a test sets it
}

// userspaceWrapper is what wg-quick runs where the kernel has no WireGuard
// module (WG_QUICK_USERSPACE_IMPLEMENTATION): like wireguard-go, it starts
// the device in the background and returns once its UAPI socket answers.
func userspaceWrapper(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "wg-userspace")
	script := fmt.Sprintf(`#!/bin/sh
setsid %s wireguard-userspace "$1" 1420 >>%s 2>&1 </dev/null &
i=0
while [ $i -lt 200 ]; do
	[ -S "/var/run/wireguard/$1.sock" ] && exit 0
	sleep 0.05
	i=$((i+1))
done
echo "userspace device $1 did not come up" >&2
exit 1
`, meshd(t), filepath.Join(dir, "wg-userspace.log"))
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// up brings the laptop's tunnel up from conf alone, with wg-quick.
func (l *laptop) up(t *testing.T, conf string) {
	t.Helper()
	l.conf = filepath.Join(l.Dir, l.iface+".conf")
	if err := os.WriteFile(l.conf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := l.Command("wg-quick", "up", l.conf)
	cmd.Env = append(os.Environ(), "WG_QUICK_USERSPACE_IMPLEMENTATION="+userspaceWrapper(t, l.Dir))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("wg-quick up on %s: %v: %s\nconfig:\n%s", l.Name, err, out, conf)
	}
	t.Cleanup(func() { l.Exec("wg-quick", "down", l.conf) })
	checkLink(t, l.Host, l.iface, suiteMode())
}

// pingWithin sends an echo every 200ms (each waiting 200ms for its reply)
// until one comes back or d passes.
func (l *laptop) pingWithin(to netip.Addr, d time.Duration, from ...string) bool {
	argv := []string{"ping", "-n", "-q", "-c", "1", "-W", "0.2"}
	if len(from) > 0 {
		argv = append(argv, "-I", from[0])
	}
	argv = append(argv, to.String())
	deadline := time.Now().Add(d)
	for {
		if _, err := l.Exec(argv...); err == nil {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// cannotPing checks that three echoes in three seconds all go unanswered.
func (l *laptop) cannotPing(to netip.Addr, from ...string) bool {
	argv := []string{"ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "1"}
	if len(from) > 0 {
		argv = append(argv, "-I", from[0])
	}
	out, _ := l.Exec(append(argv, to.String())...)
	return strings.Contains(out, " 0 received")
}

// gatewayPeerCmd runs `meshd gateway peer SUB --config <n's> ARGS...` in
// n's namespace.
func gatewayPeerCmd(n *node, t *testing.T, sub string, args ...string) *exec.Cmd {
	argv := append([]string{meshd(t), "gateway", "peer", sub, "--config", n.config}, args...)
	return n.Command(argv...)
}

type createResult struct {
	Address string `json:"address"`
	Config  string `json:"config"`
	Org     string `json:"org"`
	Name    string `json:"name"`
}

func createPeer(t *testing.T, n *node, args ...string) createResult {
	t.Helper()
	out, err := gatewayPeerCmd(n, t, "create", append([]string{"--json"}, args...)...).Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("gateway peer create %v: %v: %s", args, err, stderr)
	}
	var res createResult
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("create --json printed %s: %v", out, err)
	}
	return res
}

// gatewayKV lists everything under the gateways' KV root, key -> value.
func gatewayKV(t *testing.T, c *api.Client) map[string]string {
	t.Helper()
	pairs, _, err := c.KV().List(gateway.KVRoot, nil)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, p := range pairs {
		out[p.Key] = string(p.Value)
	}
	return out
}

// userPeers reads the gateway's user link as the device has it.
func userPeers(t *testing.T, gw *node, iface string) map[wgtypes.Key]string {
	t.Helper()
	out := map[wgtypes.Key]string{}
	dev, err := deviceIn(gw.Netns, iface)
	if err != nil {
		return out
	}
	for _, p := range dev.Peers {
		var ips []string
		for _, a := range p.AllowedIPs {
			ips = append(ips, a.String())
		}
		out[p.PublicKey] = strings.Join(ips, ",")
	}
	return out
}

var privateKeyLine = regexp.MustCompile(`(?m)^PrivateKey = (\S+)$`)

func configKey(t *testing.T, conf string) wgtypes.Key {
	t.Helper()
	m := privateKeyLine.FindStringSubmatch(conf)
	if m == nil {
		t.Fatalf("config has no PrivateKey line:\n%s", conf)
	}
	k, err := wgtypes.ParseKey(m[1])
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey()
}

// TestGateway: a gateway node provisions end users. Laptops brought up from
// the printed configuration alone reach mesh hosts through the gateway,
// seen with their assigned address; allow lists, source addresses, removal,
// expiry and address reuse are enforced in the kernel; concurrent creates
// get distinct addresses; bad input writes nothing. It runs the gateway
// with gateway.jit off (every record in the kernel); TestGatewayJIT runs
// the default.
func TestGateway(t *testing.T) {
	lab := testlab.NewLab(t)
	server := lab.StartConsulServer("consul")
	servers := []*testlab.Consul{server}
	gwIface := fmt.Sprintf("wg%dgw", os.Getpid()%10000)
	// A pool of 32 addresses (31 usable: the first is never handed out),
	// small enough to run out of.
	gw := newNode(t, lab, servers, 1, fmt.Sprintf("gateway:\n  enabled: true\n  interface: %s\n  pool: fdaa:0:1:ffff::/123\n  jit: false\n", gwIface))
	b := newNode(t, lab, servers, 2, "")
	c := newNode(t, lab, servers, 3, "")
	nodes := []*node{gw, b, c}
	for _, n := range nodes {
		n.start(t)
	}
	defer checkNoRace(t, nodes)
	converged(t, nodes)
	pingAll(t, nodes)
	testlab.Eventually(t, 30*time.Second, "the gateway's user link exists", func() bool {
		_, err := linkKind(gw.Netns, gwIface)
		return err == nil
	})
	checkLink(t, gw.Host, gwIface, gw.mode)
	kv := server.Client(t)
	testlab.Eventually(t, 30*time.Second, "the gateway is in the catalog with its role", func() bool {
		_, err := gateway.Lookup(context.Background(), kv, "meshd", gw.Name, meshRules)
		return err == nil
	})

	underlayCannotInject(t, lab, gw, b)

	newLaptop := func(name string) *laptop {
		return &laptop{Host: lab.AddHost(name), iface: fmt.Sprintf("wl%d%s", os.Getpid()%10000, name)}
	}

	// A laptop with the default allow list reaches B through the gateway
	// within 2 seconds of create returning.
	lap := newLaptop("lap1")
	res := createPeer(t, b, "--gateway", gw.Name, "--org", "acme", "--name", "laptop")
	created := time.Now()
	lap.up(t, res.Config)
	if !lap.pingWithin(b.meshAddr(), budget(2*time.Second)-time.Since(created)) {
		t.Fatalf("laptop did not reach %s within %s of create returning; config:\n%s\ngateway log:\n%s", b.Name, budget(2*time.Second), res.Config, tail(gw.proc.Log(), 40))
	}
	t.Logf("laptop pinged %s %s after create returned", b.Name, time.Since(created).Round(time.Millisecond))
	if !lap.pingWithin(c.meshAddr(), 5*time.Second) {
		t.Fatalf("laptop with the default allow list cannot reach %s", c.Name)
	}
	// B sees the laptop's assigned address as the source.
	sink, err := testlab.ListenPacketInNetns(b.Netns, "udp6", net.JoinHostPort(b.meshAddr().String(), "7001"))
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	out, err := lap.Exec("bash", "-c", "echo hello >/dev/udp/"+b.meshAddr().String()+"/7001")
	if err != nil {
		t.Fatalf("send from laptop: %v: %s", err, out)
	}
	sink.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	_, from, err := sink.ReadFrom(buf)
	if err != nil {
		t.Fatalf("B got nothing from the laptop: %v", err)
	}
	if got := from.(*net.UDPAddr).AddrPort().Addr(); got.String() != res.Address {
		t.Errorf("B saw source %s, want the laptop's assigned address %s", got, res.Address)
	}

	// A peer allowed only B's prefix: it reaches B, and not C even when it
	// routes C into the tunnel itself (the gateway's firewall drops it);
	// nor can it send from an address that is not its own.
	narrow := newLaptop("lap2")
	res2 := createPeer(t, b, "--gateway", gw.Name, "--org", "acme", "--name", "narrow", "--allow", b.prefix.String())
	narrow.up(t, res2.Config)
	if !narrow.pingWithin(b.meshAddr(), 5*time.Second) {
		t.Fatalf("narrow peer cannot reach %s, which it is allowed", b.Name)
	}
	gwKey := lookupGatewayKey(t, kv, gw.Name)
	for _, argv := range [][]string{
		{"wg", "set", narrow.iface, "peer", gwKey.String(), "allowed-ips", "fdaa::/16"},
		{"ip", "-6", "route", "add", c.prefix.String(), "dev", narrow.iface},
	} {
		if out, err := narrow.Exec(argv...); err != nil {
			t.Fatalf("%v: %v: %s", argv, err, out)
		}
	}
	dropsBefore := dropCounter(t, gw)
	if !narrow.cannotPing(c.meshAddr()) {
		t.Errorf("a peer whose allow list excludes %s reached it", c.Name)
	}
	if drops := dropCounter(t, gw); drops == dropsBefore {
		t.Errorf("the gateway's drop rule counted no packets; the laptop's own routing, not the gateway, stopped them")
	}
	// Another address of the gateway's pool, used as the source: the
	// gateway's WireGuard drops it (cryptokey routing).
	spoofed := "fdaa:0:1:ffff::1e"
	if out, err := narrow.Exec("ip", "-6", "addr", "add", spoofed+"/128", "dev", narrow.iface, "nodad"); err != nil {
		t.Fatalf("add %s: %v: %s", spoofed, err, out)
	}
	if !narrow.cannotPing(b.meshAddr(), spoofed) {
		t.Errorf("a peer sent from an address that is not its own and got through")
	}
	if out, err := narrow.Exec("ip", "-6", "addr", "del", spoofed+"/128", "dev", narrow.iface); err != nil {
		t.Fatalf("delete %s: %v: %s", spoofed, err, out)
	}
	if !narrow.pingWithin(b.meshAddr(), 5*time.Second) {
		t.Errorf("narrow peer lost %s after the hostile attempts", b.Name)
	}

	// Someone flushes the gateway's whole ruleset: within seconds (not at
	// the next resync) meshd's table is back and the narrow peer is
	// filtered again.
	if out, err := gw.Exec("nft", "flush", "ruleset"); err != nil {
		t.Fatalf("nft flush ruleset: %v: %s", err, out)
	}
	flushed := time.Now()
	testlab.Eventually(t, 5*time.Second, "the gateway's table rebuilt after nft flush ruleset", func() bool {
		out, err := gw.Exec("nft", "list", "table", "ip6", "meshd")
		return err == nil && strings.Contains(out, "jump users") && strings.Contains(out, b.prefix.String())
	})
	t.Logf("table rebuilt %s after the flush", time.Since(flushed).Round(time.Millisecond))
	if !narrow.cannotPing(c.meshAddr()) {
		t.Errorf("after the flush, a peer whose allow list excludes %s reached it", c.Name)
	}

	// Expiry cuts a peer off; its record and address claim go. The lifetime
	// has to outlast creating the peer, wg-quick up and a first handshake,
	// which take several times longer under emulation.
	temp := newLaptop("lap3")
	res3 := createPeer(t, b, "--gateway", gw.Name, "--org", "acme", "--name", "temp", "--expires", budget(4*time.Second).String())
	temp.up(t, res3.Config)
	if !temp.pingWithin(b.meshAddr(), budget(3*time.Second)) {
		t.Fatalf("expiring peer never reached %s", b.Name)
	}
	tempKey := configKey(t, res3.Config)
	testlab.Eventually(t, budget(20*time.Second), "the expired peer leaves the gateway's device, route and KV", func() bool {
		_, inKernel := userPeers(t, gw, gwIface)[tempKey]
		routes, _ := gw.Exec("ip", "-6", "route", "show", "proto", "77", "dev", gwIface)
		_, record := gatewayKV(t, kv)[gateway.RecordKey(gw.Name, "acme", "temp")]
		_, claim := gatewayKV(t, kv)[gateway.AddressKey(gw.Name, netip.MustParseAddr(res3.Address))]
		return !inKernel && !strings.Contains(routes, res3.Address) && !record && !claim
	})
	if !temp.cannotPing(b.meshAddr()) {
		t.Errorf("expired peer still reaches %s", b.Name)
	}

	// 20 concurrent creates on one gateway get 20 distinct addresses.
	const concurrent = 20
	addrs := make([]string, concurrent)
	var wg sync.WaitGroup
	for i := range concurrent {
		wg.Go(func() {
			addrs[i] = createPeer(t, b, "--gateway", gw.Name, "--org", "burst", "--name", fmt.Sprintf("p%d", i)).Address
		})
	}
	wg.Wait()
	seen := map[string]bool{res.Address: true, res2.Address: true}
	pool := netip.MustParsePrefix("fdaa:0:1:ffff::/123")
	for _, a := range addrs {
		if seen[a] {
			t.Errorf("address %s handed out twice (all: %v)", a, addrs)
		}
		if p, err := netip.ParseAddr(a); err != nil || !pool.Contains(p) {
			t.Errorf("address %q is not in the pool %s", a, pool)
		}
		seen[a] = true
	}
	testlab.Eventually(t, 20*time.Second, "the gateway holds all 22 user peers", func() bool {
		return len(userPeers(t, gw, gwIface)) == 2+concurrent
	})
	// Status and metrics say so.
	st, err := gw.status(t)
	if err != nil || st.Gateway == nil || st.Gateway.Peers != 2+concurrent || !st.Gateway.Synced || st.Gateway.LastError != "" {
		t.Errorf("gateway status: %+v, %v; want 22 peers, synced, no error", st.Gateway, err)
	}
	// An entry nobody signed, so that the scrape has rejected entries too.
	forgedKey, _ := wgtypes.GeneratePrivateKey()
	if _, err := kv.Catalog().Register(&api.CatalogRegistration{Node: "forger", Address: "198.18.9.9",
		Service: &api.AgentService{ID: "meshd-forger", Service: "meshd", Meta: map[string]string{"v": "1", "node": "forger",
			"public_key": forgedKey.PublicKey().String(), "endpoint": "198.18.9.9:51820", "prefix": "fdaa:0:99::/48"}}}, nil); err != nil {
		t.Fatal(err)
	}
	testlab.Eventually(t, 10*time.Second, "the gateway rejects the unsigned entry", func() bool { return rejected(t, gw, "meshd-forger", "credential") })
	values := scrape(t, gw)
	for series, want := range map[string]float64{"meshd_gateway_peers": 2 + concurrent, "meshd_gateway_synced": 1, "meshd_gateway_rejected_records": 0} {
		if got, ok := values[series]; !ok || got != want {
			t.Errorf("%s = %v (present: %v), want %v", series, got, ok, want)
		}
	}
	// The dashboard's queries parse and name only metrics this scrape has.
	checkDashboard(t, values)

	// Fill the pool: 31 usable addresses, 22 taken. Filling it needs the
	// expired peer's address, which expiry freed: it is handed out again.
	for i := range 31 - 2 - concurrent {
		createPeer(t, b, "--gateway", gw.Name, "--org", "fill", "--name", fmt.Sprintf("f%d", i))
	}
	if owner := gatewayKV(t, kv)[gateway.AddressKey(gw.Name, netip.MustParseAddr(res3.Address))]; owner == "" || owner == "acme/temp" {
		t.Errorf("the expired peer's address %s is not reused after expiry (claim: %q)", res3.Address, owner)
	}

	// Bad input: a clear one-line error, exit 2, nothing written.
	before := gatewayKV(t, kv)
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"malformed public key", []string{"--gateway", gw.Name, "--org", "acme", "--name", "x", "--public-key", "not-a-key"}, "--public-key"},
		{"unknown gateway", []string{"--gateway", "nosuch", "--org", "acme", "--name", "x"}, "no usable gateway"},
		{"node that is not a gateway", []string{"--gateway", b.Name, "--org", "acme", "--name", "x"}, "not a gateway"},
		{"name clash", []string{"--gateway", gw.Name, "--org", "acme", "--name", "laptop"}, "exists"},
		{"allow outside the supernet", []string{"--gateway", gw.Name, "--org", "acme", "--name", "x", "--allow", "fdbb::/16"}, "inside the mesh supernet"},
		{"allow not a CIDR", []string{"--gateway", gw.Name, "--org", "acme", "--name", "x", "--allow", "fdaa::1"}, "--allow"},
		{"org not a DNS label", []string{"--gateway", gw.Name, "--org", "Acme_Corp", "--name", "x"}, "--org"},
		{"negative expiry", []string{"--gateway", gw.Name, "--org", "acme", "--name", "x", "--expires", "-1h"}, "--expires"},
		{"pool exhausted", []string{"--gateway", gw.Name, "--org", "acme", "--name", "x"}, "exhausted"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cmd := gatewayPeerCmd(b, t, "create", tt.args...)
			out, err := cmd.CombinedOutput()
			ee, ok := err.(*exec.ExitError)
			if !ok || ee.ExitCode() != 2 {
				t.Fatalf("exit %v, want status 2; output: %s", err, out)
			}
			msg := strings.TrimSpace(string(out))
			if strings.Contains(msg, "\n") || !strings.Contains(msg, tt.want) {
				t.Errorf("output %q: want one line mentioning %q", msg, tt.want)
			}
		})
	}
	if diff := cmp.Diff(before, gatewayKV(t, kv)); diff != "" {
		t.Errorf("bad input changed KV (-before +after):\n%s", diff)
	}

	// Remove cuts the laptop off at once, and its address is free again:
	// the pool is full, so the next create gets exactly that address.
	lapKey := configKey(t, res.Config)
	out2, err := gatewayPeerCmd(b, t, "remove", "--gateway", gw.Name, "--org", "acme", "--name", "laptop").CombinedOutput()
	if err != nil {
		t.Fatalf("remove: %v: %s", err, out2)
	}
	testlab.Eventually(t, 10*time.Second, "the removed peer leaves the gateway's device and routes", func() bool {
		_, inKernel := userPeers(t, gw, gwIface)[lapKey]
		routes, _ := gw.Exec("ip", "-6", "route", "show", "proto", "77", "dev", gwIface)
		return !inKernel && !strings.Contains(routes, res.Address+" ")
	})
	if !lap.cannotPing(b.meshAddr()) {
		t.Errorf("removed peer still reaches %s", b.Name)
	}
	again := createPeer(t, b, "--gateway", gw.Name, "--org", "acme", "--name", "again")
	if again.Address != res.Address {
		t.Errorf("after remove, the only free address is %s, but create got %s", res.Address, again.Address)
	}

	// list shows what is there.
	out3, err := gatewayPeerCmd(b, t, "list", "--gateway", gw.Name, "--org", "acme", "--json").Output()
	if err != nil {
		t.Fatal(err)
	}
	var listed []struct{ Name, State, Address string }
	if err := json.Unmarshal(out3, &listed); err != nil {
		t.Fatalf("list --json: %v: %s", err, out3)
	}
	var names []string
	for _, p := range listed {
		names = append(names, p.Name+"="+p.State)
	}
	if got, want := strings.Join(names, " "), "again=active narrow=active"; got != want {
		t.Errorf("list --org acme = %q, want %q", got, want)
	}

	// A gateway restarted while its Consul agent is down applies the
	// records it saved: a peer whose record expired meanwhile is cut off.
	if out, err := gatewayPeerCmd(b, t, "remove", "--gateway", gw.Name, "--org", "acme", "--name", "again").CombinedOutput(); err != nil {
		t.Fatalf("remove: %v: %s", err, out)
	}
	brief := createPeer(t, b, "--gateway", gw.Name, "--org", "acme", "--name", "brief", "--expires", "8s")
	expires := time.Now().Add(8 * time.Second)
	briefKey := configKey(t, brief.Config)
	testlab.Eventually(t, 10*time.Second, "the brief peer on the gateway", func() bool {
		_, ok := userPeers(t, gw, gwIface)[briefKey]
		return ok
	})
	gw.proc.Signal(syscall.SIGTERM)
	if exited, err := gw.proc.Wait(10 * time.Second); !exited {
		t.Fatalf("the gateway's meshd did not stop: %v", err)
	}
	gw.Consul.Stop()
	time.Sleep(time.Until(expires) + time.Second)
	gw.start(t)
	testlab.Eventually(t, 15*time.Second, "the peer that expired while the gateway was down leaves its device, Consul still down", func() bool {
		_, ok := userPeers(t, gw, gwIface)[briefKey]
		return !ok
	})
	if _, ok := userPeers(t, gw, gwIface)[configKey(t, res2.Config)]; !ok {
		t.Errorf("the restarted gateway dropped a live peer (narrow) while Consul was down")
	}
	if !strings.Contains(gw.proc.Log(), "applying saved gateway records") {
		t.Errorf("the gateway's log does not say it applied its saved records:\n%s", tail(gw.proc.Log(), 20))
	}
}

// meshRules are the rules every test node runs with (the default supernet).
var meshRules = peers.Rules{Supernet: netip.MustParsePrefix("fdaa::/16"), Trust: trusttest.Trust()}

func lookupGatewayKey(t *testing.T, c *api.Client, gw string) wgtypes.Key {
	t.Helper()
	info, err := gateway.Lookup(context.Background(), c, "meshd", gw, meshRules)
	if err != nil {
		t.Fatal(err)
	}
	return info.PublicKey
}

var counterPackets = regexp.MustCompile(`counter packets (\d+) bytes \d+ drop`)

// dropCounter reads how many packets the gateway's drop rules counted, all together.
func dropCounter(t *testing.T, gw *node) int {
	t.Helper()
	out, err := gw.Exec("nft", "list", "table", "ip6", "meshd")
	if err != nil {
		t.Fatalf("nft list table: %v: %s", err, out)
	}
	ms := counterPackets.FindAllStringSubmatch(out, -1)
	if ms == nil {
		t.Fatalf("no drop counter in the gateway's table:\n%s", out)
	}
	n := 0
	for _, m := range ms {
		c, _ := strconv.Atoi(m[1])
		n += c
	}
	return n
}

// underlayCannotInject is the attack of a neighbour on the gateway's
// underlay: it routes the mesh supernet through the gateway and sends to a
// mesh host from an address of the gateway's user pool. The gateway
// forwards into its mesh link only from its user link (and the mesh link),
// so the datagrams never reach the host; the drop rule's counter shows
// they were routed there and dropped.
func underlayCannotInject(t *testing.T, lab *testlab.Lab, gw, target *node) {
	t.Helper()
	nb := lab.AddHost("nb")
	out, err := gw.Exec("ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link")
	f := strings.Fields(out)
	if err != nil || len(f) < 4 {
		t.Fatalf("gateway's link-local address: %v %q", err, out)
	}
	gwLL, _, _ := strings.Cut(f[3], "/")
	const spoofed = "fdaa:0:1:ffff::1e" // inside the gateway's pool
	for _, argv := range [][]string{
		{"ip", "-6", "addr", "add", spoofed + "/128", "dev", "eth0", "nodad"},
		{"ip", "-6", "route", "add", "fdaa::/16", "via", gwLL, "dev", "eth0"},
	} {
		if out, err := nb.Exec(argv...); err != nil {
			t.Fatalf("%v: %v: %s", argv, err, out)
		}
	}
	sink, err := testlab.ListenPacketInNetns(target.Netns, "udp6", net.JoinHostPort(target.meshAddr().String(), "7002"))
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	src, err := testlab.ListenPacketInNetns(nb.Netns, "udp6", net.JoinHostPort(spoofed, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst := &net.UDPAddr{IP: target.meshAddr().AsSlice(), Port: 7002}
	dropped := func() int {
		out, _ := gw.Exec("nft", "list", "chain", "ip6", "meshd", "forward")
		for line := range strings.Lines(out) {
			if strings.Contains(line, "oifname") && strings.Contains(line, "drop") {
				var n int
				if _, err := fmt.Sscanf(line[strings.Index(line, "packets"):], "packets %d", &n); err == nil {
					return n
				}
			}
		}
		return -1
	}
	received := func(wait time.Duration) {
		t.Helper()
		sink.SetReadDeadline(time.Now().Add(wait))
		if n, from, err := sink.ReadFrom(make([]byte, 64)); err == nil {
			t.Fatalf("%s got %d bytes from %v: the gateway forwarded the underlay into the mesh", target.Name, n, from)
		}
	}
	testlab.Eventually(t, 10*time.Second, "the neighbour's datagrams routed to the gateway and dropped there", func() bool {
		src.WriteTo([]byte("injected"), dst)
		received(50 * time.Millisecond)
		return dropped() > 0
	})
	received(2 * time.Second)
}
