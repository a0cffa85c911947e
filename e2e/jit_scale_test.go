package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/gateway"
	"meshd.dev/meshd/internal/testlab"
)

// TestGatewayScale is the just-in-time gateway under load, small in `make
// test` and large in `make bench-gateway` (the environment sets the sizes
// and MESHD_BENCH_REPORT, where it writes its BENCHMARKS.md section):
// MESHD_BENCH_RECORDS records on one gateway, MESHD_BENCH_LAPTOPS real
// wg-quick laptops connecting (each created and brought up while the
// gateway holds few records, then as many while it holds them all), and
// a flood of MESHD_BENCH_FLOOD handshake initiations a second from
// unknown keys, from 20 source addresses, while more laptops connect.
// What it checks at any size: the kernel holds exactly the laptops that
// connected, a create is followed by one record read and no full read,
// the flood installs nothing and real users still connect, and idle
// laptops leave the kernel.
func TestGatewayScale(t *testing.T) {
	records := envInt(t, "MESHD_BENCH_RECORDS", 300)
	laptops := envInt(t, "MESHD_BENCH_LAPTOPS", 3)
	flood := envInt(t, "MESHD_BENCH_FLOOD", 2000)
	const idle = 20 * time.Second
	lab := testlab.NewLab(t)
	server := lab.StartConsulServer("consul")
	servers := []*testlab.Consul{server}
	gwIface := fmt.Sprintf("ws%dgw", os.Getpid()%10000)
	gw := newNode(t, lab, servers, 1, fmt.Sprintf("gateway:\n  enabled: true\n  interface: %s\n  idle_timeout: %s\n", gwIface, idle))
	slowResync(t, gw) // active peers' records are read again every resync
	b := newNode(t, lab, servers, 2, "")
	nodes := []*node{gw, b}
	startAll(t, nodes...)
	defer checkNoRace(t, nodes)
	pingAll(t, nodes)
	kv := server.Client(t)
	var info gateway.Info
	testlab.Eventually(t, 30*time.Second, "the gateway in the catalog", func() bool {
		var err error
		info, err = gateway.Lookup(context.Background(), kv, "meshd", gw.Name, meshRules)
		return err == nil
	})
	jit := func() gateway.Status {
		t.Helper()
		st, err := gw.status(t)
		if err != nil || st.Gateway == nil || st.Gateway.JIT == nil {
			t.Fatalf("gateway status: %+v, %v", st.Gateway, err)
		}
		return *st.Gateway
	}
	procs := gatewayProcs(t, gw, gwIface)
	meshdProc := procs[:1]
	var (
		all     []*laptop
		rtts    = map[string][]time.Duration{} // first echo's round trip, handshake included
		toEcho  = map[string][]time.Duration{} // create returning -> first echo
		perRead = map[string][]float64{}       // bytes the gateway's processes read per create
		reads   = map[string][2]uint64{}       // record and full reads over the phase
	)
	// Under a flood the device itself is under load: WireGuard then makes
	// every initiator prove its address with a cookie first (mac2), which
	// costs a user one more handshake attempt, 5 s later.
	connect := func(phase string, n int, within time.Duration) {
		t.Helper()
		st0 := jit()
		for i := range n {
			l := &laptop{Host: lab.AddHost(fmt.Sprintf("l%d", len(all))), iface: fmt.Sprintf("ws%dl%d", os.Getpid()%10000, len(all))}
			all = append(all, l)
			rchar := procs.rchar(t)
			res := createPeer(t, b, "--gateway", gw.Name, "--org", "bench", "--name", fmt.Sprintf("%s%d", phase, i))
			created := time.Now()
			// No keepalive: the ping is the laptop's first packet.
			l.up(t, keepaliveLine.ReplaceAllString(res.Config, ""))
			rtt, ok := firstEcho(l, b.meshAddr(), within)
			if !ok {
				t.Fatalf("%s: laptop %d got no echo from %s within %s of create; gateway log:\n%s", phase, i, b.Name, within, tail(gw.proc.Log(), 20))
			}
			toEcho[phase] = append(toEcho[phase], time.Since(created))
			// Connected: from now on the laptop keeps its session, as a
			// user's configuration does (every 25 s there; here 5 s, well
			// inside the test's short idle timeout).
			if out, err := l.Exec("wg", "set", l.iface, "peer", info.PublicKey.String(), "persistent-keepalive", "5"); err != nil {
				t.Fatalf("wg set keepalive: %v: %s", err, out)
			}
			rtts[phase] = append(rtts[phase], rtt)
			perRead[phase] = append(perRead[phase], float64(procs.rchar(t)-rchar))
		}
		st := jit()
		reads[phase] = [2]uint64{st.RecordReads - st0.RecordReads, st.FullReads - st0.FullReads}
		if st.FullReads != st0.FullReads {
			t.Errorf("%s: %d creates made the gateway read every record %d times, want never", phase, n, st.FullReads-st0.FullReads)
		}
		if st.RecordReads-st0.RecordReads < uint64(n) {
			t.Errorf("%s: %d creates, %d record reads; want one each", phase, n, st.RecordReads-st0.RecordReads)
		}
	}

	connect("few", laptops, budget(8*time.Second))
	// Every other record, written straight into KV (as a restore would);
	// the gateway reads them all when told its hints were lost.
	bulk := time.Now()
	bulkRecords(t, kv, gw.Name, info.Pool, records)
	t.Logf("wrote %d records in %s", records, time.Since(bulk).Round(time.Millisecond))
	if _, err := kv.KV().Put(&api.KVPair{Key: gateway.ChangesKey(gw.Name), Value: []byte("restored")}, nil); err != nil {
		t.Fatal(err)
	}
	read := time.Now()
	testlab.Eventually(t, 120*time.Second, "the gateway knows every record", func() bool { return jit().JIT.Records == records+laptops })
	fullRead := time.Since(read)
	connect("many", laptops, budget(8*time.Second))
	if got := len(userPeers(t, gw, gwIface)); got != 2*laptops {
		t.Errorf("the gateway's kernel holds %d peers with %d laptops connected and %d records, want %d", got, 2*laptops, records+2*laptops, 2*laptops)
	}

	// The flood, with more laptops connecting through it.
	cpuIdle, meshdIdle := procs.cpu(t), meshdProc.cpu(t)
	time.Sleep(5 * time.Second)
	cpuIdle, meshdIdle = procs.cpu(t)-cpuIdle, meshdProc.cpu(t)-meshdIdle
	before := jit()
	stopFlood := floodInitiations(t, lab, info, flood)
	floodStart, cpu0, meshd0 := time.Now(), procs.cpu(t), meshdProc.cpu(t)
	connect("flood", laptops, budget(20*time.Second))
	if d := 5*time.Second - time.Since(floodStart); d > 0 {
		time.Sleep(d)
	}
	cpuFlood, meshdFlood, floodFor := procs.cpu(t)-cpu0, meshdProc.cpu(t)-meshd0, time.Since(floodStart)
	sent := stopFlood()
	after := jit()
	if got := after.JIT.Installs - before.JIT.Installs; got != uint64(laptops) {
		t.Errorf("during the flood %d peers were installed, want the %d laptops only", got, laptops)
	}
	if after.JIT.Refused[gateway.RefusedRateLimited] == before.JIT.Refused[gateway.RefusedRateLimited] {
		t.Errorf("a flood of %d initiations a second was never rate-limited: %v", flood, after.JIT.Refused)
	}
	kernelPeers := len(userPeers(t, gw, gwIface))
	if kernelPeers != 3*laptops {
		t.Errorf("the gateway's kernel holds %d peers, want the %d laptops", kernelPeers, 3*laptops)
	}
	rss, meshdRSS := procs.rss(t), meshdProc.rss(t)

	// Idle: every laptop goes down; the kernel empties, the records stay.
	for _, l := range all {
		l.Exec("wg-quick", "down", l.conf)
	}
	down := time.Now()
	testlab.Eventually(t, idle+budget(15*time.Second), "idle laptops leave the gateway's kernel", func() bool { return len(userPeers(t, gw, gwIface)) == 0 })
	evicted := time.Since(down)
	if st := jit(); st.JIT.Records != records+3*laptops {
		t.Errorf("after eviction the gateway knows %d records, want %d", st.JIT.Records, records+3*laptops)
	}

	report := fmt.Sprintf(`| | %d records (%d laptops each phase, %s) |
|---|---|
| first packet -> first echo, p50 / p99 (all %d laptops) | %s / %s |
| create returned -> first echo, p50: few records / all records / during the flood | %s / %s / %s |
| record reads / full reads per phase of %d creates (hinted; revalidations apart): few / all | %d / %d, %d / %d |
| bytes the gateway's processes read per create (rchar, p50): few / all | %.0f / %.0f |
| reading every record once (after lost hints) | %s |
| kernel peers with %d laptops up, of %d records | %d |
| peak RSS: meshd / with its userspace devices | %.1f MB / %.1f MB |
| gateway CPU (meshd and devices), idle / under the flood | %.1f%% / %.1f%% |
| of which meshd, idle / under the flood | %.1f%% / %.1f%% |
| flood: initiations sent, per second / refused by reason | %.0f / %v |
| idle laptops out of the kernel after wg-quick down (idle_timeout %s) | %s |
`, records, laptops, linkMode(t, gw, gwIface), len(all), pct(all2(rtts), 50), pct(all2(rtts), 99),
		pct(toEcho["few"], 50), pct(toEcho["many"], 50), pct(toEcho["flood"], 50),
		laptops, reads["few"][0], reads["few"][1], reads["many"][0], reads["many"][1],
		median(perRead["few"]), median(perRead["many"]),
		fullRead.Round(time.Millisecond), len(all), records+len(all), kernelPeers, float64(meshdRSS)/1e6, float64(rss)/1e6,
		100*cpuIdle.Seconds()/5, 100*cpuFlood.Seconds()/floodFor.Seconds(),
		100*meshdIdle.Seconds()/5, 100*meshdFlood.Seconds()/floodFor.Seconds(),
		float64(sent)/floodFor.Seconds(), diffRefused(before.JIT.Refused, after.JIT.Refused), idle, evicted.Round(time.Second))
	t.Logf("gateway at scale:\n%s", report)
	if path := os.Getenv("MESHD_BENCH_REPORT"); path != "" {
		if err := os.WriteFile(path, []byte(report), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

var keepaliveLine = regexp.MustCompile(`(?m)^PersistentKeepalive = \d+\n`)

var pingTime = regexp.MustCompile(`time=([0-9.]+) ms`)

// firstEcho sends one echo at a time (each waiting a second) until one
// comes back or d passes, and returns the answered echo's round trip (the
// first echo's, handshake included, when it is the one answered).
func firstEcho(l *laptop, to netip.Addr, d time.Duration) (time.Duration, bool) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		out, err := l.Exec("ping", "-n", "-c", "1", "-W", "1", to.String())
		if m := pingTime.FindStringSubmatch(out); err == nil && m != nil {
			ms, _ := strconv.ParseFloat(m[1], 64)
			return time.Duration(ms * float64(time.Millisecond)), true
		}
	}
	return 0, false
}

// bulkRecords writes n records (and their address claims) for gateway gw,
// 32 to a transaction, without hints.
func bulkRecords(t *testing.T, c *api.Client, gw string, pool netip.Prefix, n int) {
	t.Helper()
	base := pool.Addr().As16()
	created := time.Now().UTC().Truncate(time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for w := range 4 {
		wg.Go(func() {
			var ops api.TxnOps
			for i := w; i < n; i += 4 {
				a := base
				a[12], a[13], a[14], a[15] = 0x40|byte(i>>24), byte(i>>16), byte(i>>8), byte(i)
				k, _ := wgtypes.GeneratePrivateKey()
				rec := gateway.Record{Org: "idle", Name: fmt.Sprintf("r%d", i), PublicKey: k.PublicKey().String(),
					Address: netip.AddrFrom16(a), Allow: []netip.Prefix{netip.MustParsePrefix("fdaa::/16")}, Created: created}
				ops = append(ops,
					&api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVSet, Key: gateway.AddressKey(gw, rec.Address), Value: []byte(rec.ID())}},
					&api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVSet, Key: gateway.RecordKey(gw, rec.Org, rec.Name), Value: rec.Encode()}})
				if len(ops) == 64 || i+4 >= n {
					if ok, resp, _, err := c.Txn().Txn(ops, nil); err != nil || !ok {
						errs <- fmt.Errorf("bulk write: %v %+v", err, resp)
						return
					}
					ops = ops[:0]
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// floodInitiations sends rate initiations a second to the gateway's user
// port, from 20 addresses of a host of their own, each a real initiation
// (wireguard-go's) from a key the gateway has no record of: a right mac1,
// so each one the rate limit lets through costs its decryption. It
// returns a function that stops the flood and says how many were sent.
func floodInitiations(t *testing.T, lab *testlab.Lab, info gateway.Info, rate int) (stop func() int) {
	t.Helper()
	var msgs [][]byte
	for range 50 {
		k, _ := wgtypes.GeneratePrivateKey()
		msgs = append(msgs, testlab.Initiation(t, k, info.PublicKey))
	}
	h := lab.AddHost("flood")
	const sources = 20
	var srcs []netip.Addr
	for i := range sources {
		a := netip.AddrFrom4([4]byte{198, 18, 0, byte(230 + i)})
		if out, err := h.Exec("ip", "addr", "add", a.String()+"/32", "dev", "eth0"); err != nil {
			t.Fatalf("add %s: %v: %s", a, err, out)
		}
		srcs = append(srcs, a)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		sent int
	)
	for _, src := range srcs {
		wg.Go(func() {
			testlab.InNetns(h.Netns, func() error {
				c, err := net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0)), net.UDPAddrFromAddrPort(info.Endpoint))
				if err != nil {
					return err
				}
				defer c.Close()
				tick := time.NewTicker(10 * time.Millisecond)
				defer tick.Stop()
				per := max(1, rate/sources/100)
				n := 0
				for {
					select {
					case <-ctx.Done():
						mu.Lock()
						sent += n
						mu.Unlock()
						return nil
					case <-tick.C:
					}
					for range per {
						c.Write(msgs[rand.N(len(msgs))])
						n++
					}
				}
			})
		})
	}
	return func() int {
		cancel()
		wg.Wait()
		return sent
	}
}

// gatewayProcesses are the processes a gateway host pays for besides its
// Consul agent: meshd and the userspace devices of its links.
type gatewayProcesses []int

func gatewayProcs(t *testing.T, gw *node, gwIface string) gatewayProcesses {
	t.Helper()
	ps := gatewayProcesses{gw.proc.Cmd.Process.Pid}
	for _, line := range append(userspaceProcs(gw.iface), userspaceProcs(gwIface)...) {
		pid, _ := strconv.Atoi(strings.Fields(line)[0])
		ps = append(ps, pid)
	}
	return ps
}

func (ps gatewayProcesses) field(t *testing.T, file, name string) uint64 {
	var sum uint64
	for _, pid := range ps {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, file))
		if err != nil {
			t.Fatalf("read /proc/%d/%s: %v", pid, file, err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, name+":"); ok {
				n, _ := strconv.ParseUint(strings.Fields(v)[0], 10, 64)
				sum += n
			}
		}
	}
	return sum
}

func (ps gatewayProcesses) rchar(t *testing.T) uint64 { return ps.field(t, "io", "rchar") }
func (ps gatewayProcesses) rss(t *testing.T) uint64   { return ps.field(t, "status", "VmHWM") * 1024 }

// cpu is the processes' user and system time so far.
func (ps gatewayProcesses) cpu(t *testing.T) time.Duration {
	var ticks uint64
	for _, pid := range ps {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			t.Fatal(err)
		}
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
		u, _ := strconv.ParseUint(f[11], 10, 64)
		s, _ := strconv.ParseUint(f[12], 10, 64)
		ticks += u + s
	}
	return time.Duration(ticks) * 10 * time.Millisecond // USER_HZ is 100
}

func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive number", name, s)
	}
	return n
}

func all2(m map[string][]time.Duration) []time.Duration {
	var out []time.Duration
	for _, v := range m {
		out = append(out, v...)
	}
	return out
}

func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, (len(s)*p+99)/100-1)].Round(time.Millisecond)
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func diffRefused(a, b map[string]uint64) map[string]uint64 {
	out := map[string]uint64{}
	for k, v := range b {
		if d := v - a[k]; d > 0 {
			out[k] = d
		}
	}
	return out
}

// linkMode names the WireGuard backend of n's link iface.
func linkMode(t *testing.T, n *node, iface string) string {
	t.Helper()
	kind, err := linkKind(n.Netns, iface)
	switch {
	case err != nil:
		t.Fatal(err)
	case kind == "wireguard":
		return "kernel WireGuard"
	}
	return "userspace WireGuard"
}
