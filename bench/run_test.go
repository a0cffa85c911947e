package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/catalogsync"
	"meshd.dev/meshd/control"
	"meshd.dev/meshd/internal/testlab"
	"meshd.dev/meshd/netlinkx"
)

// parseSizes reads a flag of comma-separated positive numbers.
func parseSizes(t *testing.T, name, v string) []int {
	var sizes []int
	for _, s := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			t.Fatalf("-%s %q: want positive numbers", name, v)
		}
		sizes = append(sizes, n)
	}
	return sizes
}

// TestBench runs the benchmark: it needs -sizes and friends (see the flags)
// and writes its report with -out; `make bench` and `make bench-quick` set
// them.
func TestBench(t *testing.T) {
	testlab.RequireRoot(t)
	sizes := parseSizes(t, "sizes", *sizesFlag)
	var missedSizes []int
	if *missedAtFlag != "" {
		missedSizes = parseSizes(t, "missed-sizes", *missedAtFlag)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	lab := testlab.NewLab(t)
	server := lab.StartConsulServer("consul")
	c := server.Client(t)
	if *folderFlag {
		// As the fleet's setup does (meshd authority revoke --init).
		if _, err := catalogsync.EnsureRevocationsFolder(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	bin := buildMeshd(t)

	var hosts []*meshHost
	var targets []*target
	for i := 1; i <= *hostsFlag; i++ {
		h := startMeshHost(t, lab, server, bin, fmt.Sprintf("h%d", i), i)
		hosts = append(hosts, h)
		targets = append(targets, &target{system: Meshd, name: h.Name, iface: h.iface, nsName: h.Netns})
	}
	var classic *testlab.Host
	var classicKey wgtypes.Key
	if *classicFlag {
		var iface string
		classic, iface, classicKey = startClassic(t, lab, server, bin)
		targets = append(targets, &target{system: Classic, name: classic.Name, iface: iface})
	}
	// The probe: every event happens to it, and every target sends to it.
	pb := newProbe(t, lab, bin)
	for i, tg := range targets {
		var dev *wgtypes.Device
		testlab.Eventually(t, time.Minute, tg.name+"'s device", func() bool {
			var err error
			dev, err = wgctrlDevice(tg.iface)
			return err == nil && dev.PrivateKey != (wgtypes.Key{})
		})
		if tg.system == Meshd {
			tg.probe = pb.connect(t, hosts[i].Host, tg.iface, dev.PublicKey, hostPrefix(i+1), netip.Addr{})
			go tg.pollRoutes(ctx, t)
		} else {
			tg.probe = pb.connect(t, classic, tg.iface, classicKey, hostPrefix(classicPrefixID), meshAddr(hostPrefix(classicPrefixID)))
		}
	}
	// One floor per meshd host, each on that host's agent, like meshd;
	// and the hint key, the same way.
	var floors, hints []*blockingQuery
	for _, h := range hosts {
		if !*floorFlag {
			break
		}
		floor := &blockingQuery{path: floorPath}
		floors = append(floors, floor)
		go floor.run(ctx, h.Netns)
		if *hintFlag != "" {
			hint := &blockingQuery{path: "/v1/kv/" + *hintFlag + "?stale&wait=5m"}
			hints = append(hints, hint)
			go hint.run(ctx, h.Netns)
		}
	}
	floorWake := func(sent time.Time) time.Time { return lastWake(floors, sent) }

	var sims []Sim // the simulated nodes in the catalog but the probe
	next := 0
	probeIn, cycle := false, 0
	var points []Point
	var missed []string // the missed-changes phase's results
	for _, n := range sizes {
		// Grow the catalog to n simulated nodes, 40 to a transaction.
		start := time.Now()
		for len(sims) < n {
			batch := min(40, n-len(sims))
			var all = make([]Sim, 0, batch)
			for range batch {
				s, err := NewSim(next)
				if err != nil {
					t.Fatal(err)
				}
				next++
				all = append(all, s)
			}
			if err := txnSims(ctx, c, all); err != nil {
				t.Fatalf("register simulated nodes: %v", err)
			}
			sims = append(sims, all...)
		}
		t.Logf("N=%d: catalog filled in %s", n, time.Since(start).Round(time.Millisecond))
		inCatalog := len(sims)
		if probeIn {
			inCatalog++
		}
		if *hintFlag != "" {
			// The fill wrote no hints: make every meshd host read the whole
			// list now, as any value out of sequence in the hint key does,
			// instead of at its next full read.
			askFullRead(ctx, t, c)
		}
		waitCount(t, targets, inCatalog, len(hosts))
		t.Logf("N=%d: every kernel holds every node after %s", n, time.Since(start).Round(time.Millisecond))
		for _, tg := range targets {
			tg.medianPeriod() // forget the periods of the fill
		}

		p := Point{N: n, Latency: map[string][]time.Duration{}, MeshdByKind: map[string][]time.Duration{}, FloorByKind: map[string][]time.Duration{}, Unconverged: map[string]int{}, Reread: map[string]int{}, RxPerEvent: map[string]float64{}}
		before := map[string]procStat{}
		agentBefore := map[string]procStat{}
		rx0 := map[string]uint64{}
		for _, h := range hosts {
			ps, err := readProc(h.proc.Cmd.Process.Pid)
			if err != nil {
				t.Fatal(err)
			}
			before[h.Name] = ps
			if agentBefore[h.Name], err = readProc(h.Consul.Pid()); err != nil {
				t.Fatal(err)
			}
			rx0[h.Name] = rxBytes(t, h.Host)
		}
		if classic != nil {
			rx0[classic.Name] = rxBytes(t, classic)
		}
		profiled := make(chan struct{})
		if *profileFlag != "" && n == sizes[len(sizes)-1] {
			go func() {
				defer close(profiled)
				if err := saveProfile(hosts[0], "profile", max(int((time.Duration(*eventsFlag)*400*time.Millisecond).Seconds()), 1), *profileFlag); err != nil {
					t.Errorf("profile: %v", err)
				}
				if err := saveProfile(hosts[0], "heap", 0, *profileFlag+".heap"); err != nil {
					t.Errorf("heap profile: %v", err)
				}
			}()
		} else {
			close(profiled)
		}
		eventsStart := time.Now()
		for i := range *eventsFlag {
			// Events start -pace apart at least (one a second makes the
			// window of changes the "about one a second").
			time.Sleep(time.Until(eventsStart.Add(time.Duration(i) * *paceFlag)))
			// The probe's events go round across sizes: join, rotate,
			// endpoint, leave.
			kind := kinds[cycle%4]
			cycle++
			ev, err := runEvent(ctx, c, pb, targets, kind, next, *timeoutFlag)
			if err != nil {
				t.Fatal(err)
			}
			if kind == "join" {
				next++
			}
			probeIn = kind != "leave"
			s, old, sent, acked := ev.s, ev.old, ev.sent, ev.acked
			worst := map[string]time.Duration{}
			var meshdDone []string
			for i, tg := range targets {
				d := ev.done[i].Sub(acked)
				if err := ev.errs[i]; err != nil {
					d = *timeoutFlag
					p.Unconverged[tg.system]++
					t.Logf("N=%d %s of %s: %s did not converge: %v", n, kind, s.Name(), tg.name, err)
				}
				if tg.system == Meshd {
					meshdDone = append(meshdDone, tg.name+" "+d.Round(time.Millisecond).String())
				}
				worst[tg.system] = max(worst[tg.system], d)
			}
			for len(floors) > 0 && time.Now().Before(acked.Add(*timeoutFlag)) && floorWake(sent).IsZero() {
				time.Sleep(5 * time.Millisecond)
			}
			for sys, d := range worst {
				p.Latency[sys] = append(p.Latency[sys], max(d, 0))
			}
			p.MeshdByKind[kind] = append(p.MeshdByKind[kind], max(worst[Meshd], 0))
			if w := floorWake(sent); !w.IsZero() {
				p.Latency[Floor] = append(p.Latency[Floor], max(w.Sub(acked), 0))
				p.FloorByKind[kind] = append(p.FloorByKind[kind], max(w.Sub(acked), 0))
			} else if len(floors) > 0 {
				p.Unconverged[Floor]++
			}
			var floorWakes []string
			for _, fl := range floors {
				floorWakes = append(floorWakes, fl.wakeAfter(sent).Sub(acked).Round(time.Millisecond).String())
			}
			t.Logf("N=%d %-8s %s acked %s: meshd %s classic %s (floor per host %v, meshd per host %v)", n, kind, s.Name(), acked.UTC().Format("15:04:05.000000"),
				worst[Meshd].Round(time.Microsecond), worst[Classic].Round(time.Microsecond), floorWakes, meshdDone)
			// What the packets showed, the devices hold: the probe as it is
			// now (and not its old key), or not at all.
			for _, tg := range targets {
				ok, reads := verify(tg, kind, old, s)
				if !ok {
					t.Errorf("N=%d %s of %s: %s's device does not hold what its packets showed", n, kind, s.Name(), tg.name)
				}
				if reads > 1 {
					p.Reread[tg.system]++
					t.Logf("N=%d %s of %s: %s's device showed it on read %d", n, kind, s.Name(), tg.name, reads)
				}
			}
			// The hint meshd follows: written by the event's writer once
			// it has read the change in the catalog, as a node does.
			if !ev.hinted.IsZero() && len(hints) > 0 {
				for time.Now().Before(ev.hinted.Add(5*time.Second)) && lastWake(hints, ev.hinted).IsZero() {
					time.Sleep(5 * time.Millisecond)
				}
				if w := lastWake(hints, ev.hinted); !w.IsZero() {
					p.Hints = append(p.Hints, max(w.Sub(acked), 0))
				}
			}
		}
		<-profiled
		eventsWindow := time.Since(eventsStart)
		busy := map[string]time.Duration{} // meshd + agent CPU over the events
		for _, h := range hosts {
			ps, err := readProc(h.proc.Cmd.Process.Pid)
			if err != nil {
				t.Fatal(err)
			}
			p.CPUPerEvent = max(p.CPUPerEvent, (ps.cpu-before[h.Name].cpu)/time.Duration(*eventsFlag))
			as, err := readProc(h.Consul.Pid())
			if err != nil {
				t.Fatal(err)
			}
			agentCPU := (as.cpu - agentBefore[h.Name].cpu) / time.Duration(*eventsFlag)
			p.AgentCPUPerEvent = max(p.AgentCPUPerEvent, agentCPU)
			p.HostCPUPerEvent = max(p.HostCPUPerEvent, (ps.cpu-before[h.Name].cpu)/time.Duration(*eventsFlag)+agentCPU)
			busy[h.Name] = ps.cpu - before[h.Name].cpu + as.cpu - agentBefore[h.Name].cpu
			p.PeakRSS = max(p.PeakRSS, ps.hwm)
			p.RxPerEvent[h.Name] = float64(rxBytes(t, h.Host)-rx0[h.Name]) / float64(*eventsFlag)
		}
		if classic != nil {
			p.RxPerEvent[classic.Name] = float64(rxBytes(t, classic)-rx0[classic.Name]) / float64(*eventsFlag)
		}
		// The same hosts idle for as long (at most 2 minutes): periodic
		// reads fall in both windows, so what the events cost is the
		// difference.
		p.IdleWindow = min(eventsWindow, 2*time.Minute)
		idle0 := hostCPU(t, hosts)
		time.Sleep(p.IdleWindow)
		idle1 := hostCPU(t, hosts)
		for _, h := range hosts {
			idle := idle1[h.Name] - idle0[h.Name]
			p.HostIdlePerMinute = max(p.HostIdlePerMinute, time.Duration(float64(idle)*float64(time.Minute)/float64(p.IdleWindow)))
			scaled := time.Duration(float64(idle) * float64(eventsWindow) / float64(p.IdleWindow))
			p.HostCPUPerChange = max(p.HostCPUPerChange, max(busy[h.Name]-scaled, 0)/time.Duration(*eventsFlag))
		}
		p.EventsWindow = eventsWindow
		if *roundsFlag > 0 {
			p.CostRounds, p.IdleRounds = costRounds(ctx, t, c, hosts, sims, *roundsChangesFlag, *roundsPaceFlag, *roundsFlag)
		}
		if *hintFlag != "" {
			// What one read of the whole list costs the host (meshd and its
			// agent): asked for, as a gap does, and timed until every host
			// counted it and a second more.
			reads := map[string]uint64{}
			for _, h := range hosts {
				reads[h.Name] = status(t, h).Catalog.Reads
			}
			cpu0, agent0 := hostCPU(t, hosts), agentCPU(t, hosts)
			askFullRead(ctx, t, c)
			for _, h := range hosts {
				testlab.Eventually(t, time.Minute, h.Name+" read the whole list", func() bool { return status(t, h).Catalog.Reads > reads[h.Name] })
			}
			time.Sleep(time.Second)
			cpu1, agent1 := hostCPU(t, hosts), agentCPU(t, hosts)
			for _, h := range hosts {
				p.FullReadCPU = max(p.FullReadCPU, cpu1[h.Name]-cpu0[h.Name])
				p.FullReadAgentCPU = max(p.FullReadAgentCPU, agent1[h.Name]-agent0[h.Name])
			}
		}
		for _, tg := range targets {
			if tg.system == Meshd {
				p.RoutePeriod = max(p.RoutePeriod, tg.medianPeriod())
			}
		}
		for sys, k := range p.Unconverged {
			if k > 0 {
				t.Errorf("N=%d: %s did not converge in %d of %d events", n, sys, k, *eventsFlag)
			}
		}
		var meshTargets []*target
		for _, tg := range targets {
			if tg.system == Meshd {
				meshTargets = append(meshTargets, tg)
			}
		}
		inCatalog = len(sims)
		if probeIn {
			inCatalog++
		}
		p.InitialSync, p.FloorListRead, p.WarmListRead, p.FloorConfigure = initialSync(t, lab, server, bin, inCatalog+len(hosts), n, meshTargets)
		p.InitialFloor = p.FloorListRead + p.FloorConfigure
		points = append(points, p)

		// Missed changes: h1's meshd stopped for -missed-stop while
		// simulated nodes rotate their keys (each hinted), then continued;
		// how long until its device holds them all, with no old key left:
		// with fewer changes than the hint ring holds (the gap is read back
		// from it: 20, and 80, more than its old size of 64), and with more
		// (the whole list is read).
		if *missedFlag > 0 && *hintFlag != "" && (n == sizes[len(sizes)-1] || slices.Contains(missedSizes, n)) {
			var at []string
			for _, changes := range []int{20, 80, catalogsync.HintRing + 16} {
				d, how := missedChanges(ctx, t, c, hosts[0], targets[0], sims, changes, *missedFlag)
				at = append(at, fmt.Sprintf("%d changes while stopped for %s: caught up %s ms after SIGCONT (%s)", changes, missedFlag.String(), ms(d), how))
				t.Logf("missed changes at N = %d: %s", n, at[len(at)-1])
			}
			missed = append(missed, fmt.Sprintf("at N = %d: %s", n, strings.Join(at, "; ")))
		}
	}

	if *logLevelFlag == "debug" {
		for _, h := range hosts {
			t.Logf("meshd log of %s:\n%s", h.Name, h.proc.Log())
		}
	}

	// The packets see the kernel and nothing else: with the first meshd
	// host's agent stopped (its device runs on, in a process of its own),
	// no event shows on that host within the window while every other
	// target shows it (but a new endpoint, which WireGuard's roaming may
	// bring), and once meshd runs again the host's device holds it. The
	// window is 5 s: at 10,000 entries classic and the floor take
	// up to a couple of seconds for any event, and every system takes that
	// long for a leave (applied from the whole list: no hint removes).
	for range 4 {
		kind := kinds[cycle%4]
		cycle++
		window := 5 * time.Second
		hosts[0].proc.Signal(syscall.SIGSTOP)
		ev, err := runEvent(ctx, c, pb, targets, kind, next, window)
		hosts[0].proc.Signal(syscall.SIGCONT)
		if err != nil {
			t.Fatal(err)
		}
		if kind == "join" {
			next++
		}
		for i, tg := range targets {
			stopped := i == 0
			switch {
			case stopped && kind == "endpoint" && ev.errs[i] == nil:
				// WireGuard roaming, not meshd: the probe's device may
				// send from its new port (a rekey's initiation, a
				// keepalive) within the window, and the stopped host's
				// device then takes that endpoint. A join, a rotation
				// and a leave have no such path.
				t.Logf("%s with %s's meshd stopped: %s showed it after %s (the probe's device reached it from its new port)", kind, hosts[0].Name, tg.name, ev.done[i].Sub(ev.acked))
			case stopped != (ev.errs[i] != nil):
				t.Errorf("%s with %s's meshd stopped: %s showed it after %s (error: %v); want it shown: %t", kind, hosts[0].Name, tg.name, ev.done[i].Sub(ev.acked), ev.errs[i], !stopped)
			}
			if ok, _ := verify(tg, kind, ev.old, ev.s); !ok {
				t.Errorf("%s with %s's meshd stopped: %s's device does not hold it after", kind, hosts[0].Name, tg.name)
			}
		}
		t.Logf("%s with %s's meshd stopped for %s: converged %v, errors %v", kind, hosts[0].Name, window, ev.done, ev.errs)
	}

	// An idle catalog: no kernel writes, and every device as it was.
	writes := map[string]uint64{}
	for _, h := range hosts {
		writes[h.Name] = status(t, h).KernelWrites
	}
	devs := map[string]device{}
	for _, tg := range targets {
		devs[tg.name] = mustRead(t, tg)
	}
	time.Sleep(*idleFlag)
	idleWrites := uint64(0)
	for _, h := range hosts {
		idleWrites += status(t, h).KernelWrites - writes[h.Name]
	}
	idleChanged := 0
	for _, tg := range targets {
		if tg.system == Meshd && !devs[tg.name].same(mustRead(t, tg)) {
			idleChanged++
		}
	}
	// The harness's own device reader sees what wgctrl sees.
	for _, tg := range targets {
		dev, err := wgctrlDevice(tg.iface)
		if err != nil {
			t.Fatal(err)
		}
		fast, err := ReadUAPI(tg.iface)
		if err != nil {
			t.Fatal(err)
		}
		same := len(fast) == len(dev.Peers)
		for _, p := range dev.Peers {
			q, ok := fast[p.PublicKey]
			same = same && ok && fmt.Sprint(q.Endpoint) == fmt.Sprint(p.Endpoint) && fmt.Sprint(q.AllowedIPs) == fmt.Sprint(p.AllowedIPs)
		}
		if !same {
			t.Errorf("%s: ReadUAPI read %d peers, wgctrl %d, or they differ", tg.name, len(fast), len(dev.Peers))
		}
	}
	if idleWrites != 0 || idleChanged != 0 {
		t.Errorf("idle catalog for %s: %d kernel writes, %d devices changed; want none", *idleFlag, idleWrites, idleChanged)
	}

	var sb strings.Builder
	WriteTables(&sb, points)
	fmt.Fprintf(&sb, "Idle catalog for %s after the last size: %d kernel writes by meshd (its counter), %d meshd devices changed (read from outside).\n", *idleFlag, idleWrites, idleChanged)
	if len(missed) > 0 {
		fmt.Fprintf(&sb, "\nMissed changes (%s's meshd stopped with SIGSTOP while simulated nodes rotated their keys, each hinted; until its device, read from outside, holds every new key and no old one): %s.\n",
			hosts[0].Name, strings.Join(missed, "; "))
	}
	t.Logf("\n%s", sb.String())
	if *sectionFlag != "" {
		var b strings.Builder
		fmt.Fprintf(&b, "## Fleet cost: host CPU per change (same make bench; -floor=false, -classic=false)\n\n")
		fmt.Fprintf(&b, "TestBench again without the floor and classic (the floor's whole-list query on every meshd\n")
		fmt.Fprintf(&b, "host's agent would be counted in the host's CPU), %d events %s apart, the list read every %s\n", *eventsFlag, *paceFlag, *fullReadFlag)
		fmt.Fprintf(&b, "(so that no periodic read falls in the windows; one whole-list read is measured on its own).\n")
		fmt.Fprintf(&b, "Flags: -sizes %s -events %d -pace %s -hosts %d -full-read-interval %s -missed-stop %s -missed-sizes %q. meshd: %s.\n\n", *sizesFlag, *eventsFlag, *paceFlag, *hostsFlag, *fullReadFlag, *missedFlag, *missedAtFlag, gitDescribe())
		b.WriteString(strings.ReplaceAll(sb.String(), "### N = ", "#### N = "))
		b.WriteString("\nTargets:\n\n")
		for _, l := range targetsMet(points) {
			b.WriteString("- " + l + "\n")
		}
		if err := os.WriteFile(*sectionFlag, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if *hostCostOutFlag != "" {
		var costs []HostCost
		for _, p := range points {
			costs = append(costs, HostCost{N: p.N, PerChange: p.PerChange(), FullRead: p.FullReadCPU, FullReadAgent: p.FullReadAgentCPU})
		}
		b, _ := json.Marshal(costs)
		if err := os.WriteFile(*hostCostOutFlag, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if *outFlag != "" {
		if err := writeReport(*outFlag, *plotFlag, sb.String(), points); err != nil {
			t.Fatal(err)
		}
	}
}

// saveProfile saves one of h's meshd's Go profiles (control.Profile: over
// its status socket, as `meshd debug pprof` does) to path.
func saveProfile(h *meshHost, name string, seconds int, path string) error {
	b, err := control.Profile(context.Background(), h.sock, name, seconds)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// waitCount waits until every meshd device holds the n simulated nodes and
// the other meshd hosts, and the classic device the n nodes.
// askFullRead writes a value that is not a hint to the hint key: every
// meshd host takes it as hints it may have missed and reads the whole list.
func askFullRead(ctx context.Context, t *testing.T, c *api.Client) {
	t.Helper()
	if _, err := c.KV().Put(&api.KVPair{Key: *hintFlag, Value: []byte("bench: read the whole list")}, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		t.Fatal(err)
	}
}

// agentCPU reads, per meshd host, the CPU time of its Consul client agent.
func agentCPU(t *testing.T, hosts []*meshHost) map[string]time.Duration {
	t.Helper()
	out := map[string]time.Duration{}
	for _, h := range hosts {
		ps, err := readProc(h.Consul.Pid())
		if err != nil {
			t.Fatal(err)
		}
		out[h.Name] = ps.cpu
	}
	return out
}

// hostCPU reads, per meshd host, the CPU time of meshd and of its Consul
// client agent together.
func hostCPU(t *testing.T, hosts []*meshHost) map[string]time.Duration {
	t.Helper()
	out := map[string]time.Duration{}
	for _, h := range hosts {
		for _, pid := range []int{h.proc.Cmd.Process.Pid, h.Consul.Pid()} {
			ps, err := readProc(pid)
			if err != nil {
				t.Fatal(err)
			}
			out[h.Name] += ps.cpu
		}
	}
	return out
}

func waitCount(t *testing.T, targets []*target, n, hosts int) {
	t.Helper()
	for _, tg := range targets {
		want := n
		if tg.system == Meshd {
			want += hosts - 1
		}
		testlab.Eventually(t, 10*time.Minute, fmt.Sprintf("%s holds %d peers", tg.name, want), func() bool {
			d, _, err := tg.read()
			return err == nil && len(d) == want
		})
	}
}

// mustRead reads tg's device.
func mustRead(t *testing.T, tg *target) device {
	d, _, err := tg.read()
	if err != nil {
		t.Fatalf("read %s's device: %v", tg.name, err)
	}
	return d
}

// verify reads tg's device after an event until it holds the probe as s
// (without its old key) or, after a leave, no longer holds it; it gives
// up after 2 s, and says how many reads it took.
func verify(tg *target, kind string, old, s Sim) (ok bool, reads int) {
	deadline := time.Now().Add(2 * time.Second)
	for {
		reads++
		d, _, err := tg.read()
		if err == nil {
			_, hasOld := d[old.Key]
			switch kind {
			case "leave":
				_, in := d[s.Key]
				ok = !in
			case "rotate":
				ok = d.has(s) && !hasOld
			default:
				ok = d.has(s)
			}
		}
		if ok || time.Now().After(deadline) {
			return ok, reads
		}
	}
}

// initialSync starts a fresh meshd host and times until its device holds
// every node (the end of the first read that shows them all: a read of a
// device being filled waits behind its writes); the host then leaves.
//
// Its floor: the first read of the whole list (as meshd's first read asks
// it) through an agent started just before, beside the host's own, as the
// host's was started just before meshd; and, right after the sync, one
// bare ConfigureDevice of the peers the device holds, replacing them, on
// the same device. warmRead is a second read through the host's own agent,
// shown beside it: a warm agent answers faster than a fresh one.
func initialSync(t *testing.T, lab *testlab.Lab, server *testlab.Consul, bin string, peers, n int, others []*target) (sync, listRead, warmRead, configure time.Duration) {
	name := fmt.Sprintf("f%d", n%100000)
	// The floor's read: the first through an agent just started, as the
	// host's is when meshd starts (its first seconds are slower).
	g := lab.AddHost(fmt.Sprintf("g%d", n%100000))
	g.StartConsulClient(server)
	listRead = timeListRead(t, g.Netns)
	h := lab.AddHost(name)
	h.StartConsulClient(server)
	routed := countRoutes(t, h.Netns)
	start := time.Now()
	mh := startMeshHostOn(t, h, bin, 200+n%50)
	profiled := make(chan struct{})
	go func() {
		defer close(profiled)
		if *syncProfFlag == "" {
			return
		}
		var err error
		for time.Since(start) < 10*time.Second { // the control socket comes up once the device is open
			if err = saveProfile(mh, "profile", 4, *syncProfFlag); err == nil {
				return
			}
			if !errors.Is(err, control.ErrNotRunning) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Errorf("no profile of %s's initial sync: %v", name, err)
	}()
	defer func() { <-profiled }()
	tg := &target{system: Meshd, name: name, iface: mh.iface}
	// The device is read once the host's kernel has a route of meshd's
	// for every peer (meshd adds a peer's route once the device has it),
	// not all along: reads of a device being filled would hold up its
	// writes, which no one does on a real host, and so would asking
	// meshd's status (10,000 peers of JSON) every few milliseconds. The
	// read still decides, and it is timed by when the device answered.
	select {
	case <-routed.all(peers - 1):
	case <-time.After(10 * time.Minute):
		t.Fatalf("%s: %d of %d routes after 10 minutes", name, routed.n.Load(), peers-1)
	}
	var d time.Duration
	testlab.Eventually(t, 10*time.Minute, name+" holds every node", func() bool {
		dev, end, err := tg.read()
		if err != nil || len(dev) < peers {
			return false
		}
		d = end.Sub(start)
		return true
	})
	if *logLevelFlag == "debug" {
		t.Logf("meshd log of %s (initial sync, started %s):\n%s", name, start.UTC().Format("15:04:05.000"), mh.proc.Log())
	}
	dev, err := wgctrlDevice(mh.iface)
	if err != nil {
		t.Fatal(err)
	}
	warmRead = timeListRead(t, h.Netns)
	wg, err := wgctrl.New()
	if err != nil {
		t.Fatal(err)
	}
	cfg := wgtypes.Config{ReplacePeers: true}
	for _, p := range dev.Peers {
		cfg.Peers = append(cfg.Peers, wgtypes.PeerConfig{PublicKey: p.PublicKey, Endpoint: p.Endpoint, AllowedIPs: p.AllowedIPs,
			PersistentKeepaliveInterval: &p.PersistentKeepaliveInterval, ReplaceAllowedIPs: true})
	}
	cstart := time.Now()
	err = wg.ConfigureDevice(mh.iface, cfg)
	configure = time.Since(cstart)
	wg.Close()
	if err != nil {
		t.Fatalf("configure %s with its own %d peers: %v", mh.iface, len(cfg.Peers), err)
	}
	<-profiled // the profile's seconds end before the host leaves
	if out, err := h.Exec(bin, "leave", "--config", mh.config); err != nil {
		t.Fatalf("leave %s: %v: %s", name, err, out)
	}
	mh.proc.Wait(10 * time.Second)
	// The other hosts remove it (removal_grace is 0) before anything else
	// is measured.
	for _, other := range others {
		testlab.Eventually(t, 5*time.Minute, other.name+" removes "+name, func() bool {
			_, ok := mustRead(t, other)[dev.PublicKey]
			return !ok
		})
	}
	return d, listRead, warmRead, configure
}

// timeListRead times one read of the whole list, as meshd's first read
// asks it (stale, no compression), through the agent of the host in
// namespace ns, the body read to its end.
func timeListRead(t *testing.T, ns string) time.Duration {
	client := &http.Client{Transport: &http.Transport{DialContext: testlab.DialInNetns(ns)}}
	req, _ := http.NewRequest(http.MethodGet, "http://127.0.0.1:8500/v1/health/service/meshd?stale", nil)
	req.Header.Set("Accept-Encoding", "identity")
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		t.Fatal(err)
	}
	return time.Since(start)
}

func wgctrlDevice(name string) (*wgtypes.Device, error) {
	wg, err := wgctrl.New()
	if err != nil {
		return nil, err
	}
	defer wg.Close()
	return wg.Device(name)
}

func writeReport(path, plotPath, tables string, points []Point) error {
	var b strings.Builder
	b.WriteString("# meshd benchmarks\n\n")
	b.WriteString("Written by `make bench` (bench/run_test.go); every figure below comes from one run of it, on\n")
	b.WriteString("the machine below, with meshd, the classic approach and the floor measured side by side.\n\n")
	b.WriteString("## Machine and versions\n\n")
	for _, l := range machine() {
		b.WriteString("- " + l + "\n")
	}
	b.WriteString("\n## Method\n\n" + method + "\n")
	b.WriteString("## Results\n\n")
	if plotPath != "" {
		if err := PlotCDF(plotPath, points[len(points)-1]); err != nil {
			return err
		}
		fmt.Fprintf(&b, "![latency CDF at N = %d](%s)\n\n", points[len(points)-1].N, filepath.Base(plotPath))
	}
	b.WriteString(tables)
	b.WriteString("\n## Targets\n\n")
	for _, l := range targetsMet(points) {
		b.WriteString("- " + l + "\n")
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

const method = `- One Consul server (dev mode) and, on every host, its own Consul client agent; every host is
  a network namespace on a bridge. The hosts: ` + "`-hosts`" + ` real meshd hosts (meshd run, userspace
  WireGuard device, removal_grace 0 so that a leave is applied at once; everything else as
  default), and one classic host.
- N simulated nodes are external nodes in the catalog, each with a meshd instance (valid key,
  endpoint, prefix) and the same data as a KV record under bench/classic/, written 40 to a
  transaction.
- Events, one at a time, 200-400 ms apart, in turn: a node joins, rotates its key, changes its
  endpoint, leaves. Each is one Consul transaction that changes the catalog and the KV record
  together; its latency counts from the moment the transaction is acknowledged.
- The events happen to one simulated node that is real, the probe: a userspace WireGuard
  device in a namespace of its own, on a network of its own with every host (so its packets
  are not in the bytes counted on the hosts' underlay links). For a join it takes a new key,
  port and prefix; for a rotation a new key; for an endpoint change a new port; then, after
  200-400 ms, the transaction. Before each event but a join every host reaches it.
- A host's kernel holds the change when its packets say so: from the moment before the write,
  the host's namespace sends a datagram every millisecond to the probe's address, routed into
  the host's WireGuard link by a supernet route of the benchmark's own (so the device, not
  meshd's per-prefix route, decides), and the probe echoes it. A join, rotation or endpoint
  change holds when the first echo comes back (the host's device holds the probe's new key
  and endpoint: a handshake with the new key, or data to the new port; the handshake is in
  the figure); a leave, from the first datagram never answered, nor any after it for 100 ms
  (the host's device has dropped the peer). For meshd hosts, a join or leave also waits for
  meshd's route to the prefix (netlink RouteGet in the host's namespace, every millisecond;
  meshd's protocol tag). The slowest host counts.
- After each event every host's device is read from outside (UAPI, as wgctrl reads it) and
  must hold what the packets showed (for a rotation, without the old key); reads that
  needed a second try are counted. At the end, with the first meshd host's process stopped
  (SIGSTOP; its device runs on), four events must not show on that host within a second
  while every other host shows them: the packets see the kernel, not meshd.
- classic: consul-template (v0.41.1, built from the Go module proxy) on the classic host
  watches bench/classic/ through its own agent, renders a wg-quick style file of every node
  and runs ` + "`wg syncconf`" + ` on a userspace device, with a static route of the supernet
  into it; timed by the same packets.
- floor: a bare blocking query on /v1/health/service/meshd (stale), on every meshd host through
  that host's agent (the endpoint and agent meshd watches there), reading the whole response;
  until the slowest of them returns after the write. It asks again as soon as it has read,
  so on a busy agent it is usually first in line when the next change comes.
- Hints: meshd follows the KV key ` + "`consul.hint_key`" + ` (default meshd/hint): a node writes
  it, naming its instance and the catalog index of the change, once the catalog shows the
  change, and every meshd, woken by its blocking query on that key, reads that one instance.
  Here the event's writer does the same for the probe once the transaction is acknowledged:
  one read of the instance, then the key (` + "`-hint-key \"\"`" + ` turns hints off in meshd and
  here); both are in meshd's latency. The hint key's arrival is timed beside the floor, by a
  blocking query on it through every meshd host's agent, until the slowest of them returns.
- CPU per event: meshd's user+system time over the events of a size, divided by the events
  (the userspace WireGuard device runs in a process of its own and is not counted); its Consul
  client agent's the same way; host per change: meshd's and its agent's together over the
  events, minus theirs over an idle window right after (as long as the events took, at most
  2 minutes; scaled to the events' length), divided by the events: periodic full reads fall in
  both windows, and the idle cost per minute is given beside it. Peak RSS is meshd's VmHWM. Bytes per event: what the host's underlay link received over the
  events, divided by the events (Consul RPC, gossip and everything else on that host).
- Initial sync: a fresh meshd host with its own agent, started after the events, until its
  device answered (the first byte of the answer) the first read (UAPI) that shows every node,
  made once the host's kernel announced a route of meshd's for every node (the device takes
  its lock before it answers: every write before the read was done by then); its floor: the first read of the whole list
  through an agent started just before (as the host's was, right before meshd), plus one bare
  ConfigureDevice of the same peers (replacing them) on the same device after the sync; a
  second read through the host's own, warm agent is shown beside it; the host then leaves.
- Idle: after the last size, the catalog untouched for ` + "`-idle`" + `: meshd's own kernel-write
  counter, and every meshd device read from outside before and after.
`

// gitDescribe is the meshd commit under test.
func gitDescribe() string {
	out, err := exec.Command("git", "-C", "..", "describe", "--always", "--dirty").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}

// machine describes this machine and the versions in the run.
func machine() []string {
	run := func(name string, args ...string) string {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			return "unknown"
		}
		return strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	}
	cpu := "unknown"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	consul := os.Getenv("MESHD_CONSUL_BIN")
	return []string{
		fmt.Sprintf("CPU: %s, %d cores; kernel %s; date %s", cpu, runtime.NumCPU(), run("uname", "-r"), time.Now().UTC().Format("2006-01-02")),
		"Go: " + runtime.Version(),
		"Consul: " + run(consul, "version"),
		"consul-template: " + run(consulTemplatePath, "-v"),
		"meshd: " + gitDescribe(),
		fmt.Sprintf("Flags: -sizes %s -events %d -hosts %d -idle %s -full-read-interval %s -hint-key %q -classic=%t -floor=%t -pace %s", *sizesFlag, *eventsFlag, *hostsFlag, *idleFlag, *fullReadFlag, *hintFlag, *classicFlag, *floorFlag, *paceFlag),
	}
}

// targetsMet states where each target of the benchmark stands in this run.
func targetsMet(points []Point) []string {
	last := points[len(points)-1]
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "NOT met"
	}
	var out []string
	p99 := Quantile(last.Latency[Meshd], 0.99)
	out = append(out, fmt.Sprintf("meshd p99 at N = %d under 1 s: %s ms, %s.", last.N, ms(p99), verdict(p99 < time.Second)))
	if c := Quantile(last.Latency[Classic], 0.5); c > 0 {
		m := Quantile(last.Latency[Meshd], 0.5)
		out = append(out, fmt.Sprintf("meshd p50 at least 3x faster than classic at N = %d: %s ms vs %s ms (x%.2f), %s.", last.N, ms(m), ms(c), float64(c)/float64(max(m, 1)), verdict(3*m <= c)))
	}
	for _, p := range points {
		m, f := Quantile(p.Latency[Meshd], 0.5), Quantile(p.Latency[Floor], 0.5)
		if len(p.Latency[Floor]) == 0 {
			continue // a run without the floor
		}
		out = append(out, fmt.Sprintf("meshd p50 / floor p50 <= 1.25 at N = %d: %s, %s.",
			p.N, ratio(m, f), verdict(f > 0 && float64(m) <= 1.25*float64(f))))
	}
	var rx []string
	for _, p := range points {
		if c, ok := p.RxPerEvent["classic"]; ok {
			rx = append(rx, fmt.Sprintf("N=%d: meshd host %.0f B, classic host %.0f B", p.N, p.RxPerEvent["h1"], c))
		} else {
			rx = append(rx, fmt.Sprintf("N=%d: meshd host %.0f B", p.N, p.RxPerEvent["h1"]))
		}
	}
	out = append(out, "Bytes received per event per host (must not grow with N for meshd): "+strings.Join(rx, "; ")+".")
	out = append(out, fmt.Sprintf("meshd CPU per event at N = %d under 30 ms: %s ms, %s.", last.N, ms(last.CPUPerEvent), verdict(last.CPUPerEvent < 30*time.Millisecond)))
	out = append(out, fmt.Sprintf("meshd RSS at N = %d under 100 MB: %.1f MB, %s.", last.N, float64(last.PeakRSS)/(1<<20), verdict(last.PeakRSS < 100<<20)))
	for _, p := range points {
		if p.N == 10000 {
			out = append(out, fmt.Sprintf("Host CPU per change (meshd + its Consul agent, minus idle) at N = 10000 under 2 ms: %s ms, %s.", ms(p.PerChange()), verdict(p.PerChange() < 2*time.Millisecond)))
		}
	}
	for _, p := range points {
		if p.N == 10000 && p.InitialFloor > 0 {
			r := float64(p.InitialSync) / float64(p.InitialFloor)
			out = append(out, fmt.Sprintf("Initial sync at N = 10000 within 1.25x of its floor: %s vs %s ms (x%.2f), %s.", ms(p.InitialSync), ms(p.InitialFloor), r, verdict(r <= 1.25)))
		}
	}
	if first := points[0]; len(points) > 1 && first.PerChange() > 0 {
		out = append(out, fmt.Sprintf("Host CPU per change at N = %d within 1.5x of N = %d: %s vs %s ms (x%.2f), %s.", last.N, first.N,
			ms(last.PerChange()), ms(first.PerChange()), float64(last.PerChange())/float64(first.PerChange()),
			verdict(float64(last.PerChange()) <= 1.5*float64(first.PerChange()))))
	}
	return out
}

// missedChanges stops h's meshd for stop while changes simulated nodes
// rotate their keys (spread over the window, each written and hinted as
// meshd would), continues it, and returns how long after SIGCONT its
// device (tg, read from outside) held every new key and none of the old
// ones, and how h caught up (its status: ring reads, gaps).
func missedChanges(ctx context.Context, t *testing.T, c *api.Client, h *meshHost, tg *target, sims []Sim, changes int, stop time.Duration) (time.Duration, string) {
	t.Helper()
	before := status(t, h).Catalog
	h.proc.Signal(syscall.SIGSTOP)
	stopped := time.Now()
	old := map[wgtypes.Key]bool{}
	fresh := map[wgtypes.Key]netip.Prefix{}
	for i := range changes {
		time.Sleep(time.Until(stopped.Add(time.Duration(i) * stop / time.Duration(changes+1))))
		s := &sims[i%len(sims)]
		if _, ok := fresh[s.Key]; ok {
			delete(fresh, s.Key)
		} else {
			old[s.Key] = true
		}
		rotate(ctx, t, c, s)
		fresh[s.Key] = s.Prefix
	}
	time.Sleep(time.Until(stopped.Add(stop)))
	h.proc.Signal(syscall.SIGCONT)
	cont := time.Now()
	t.Logf("%s continued at %s after %d changes", h.Name, cont.UTC().Format("15:04:05.000"), changes)
	var took time.Duration
	testlab.Eventually(t, 5*time.Minute, h.Name+" holds every change it missed", func() bool {
		dev, err := ReadUAPI(tg.iface)
		if err != nil {
			return false
		}
		for k, p := range fresh {
			if q, ok := dev[k]; !ok || len(q.AllowedIPs) != 1 || q.AllowedIPs[0].String() != p.String() {
				return false
			}
		}
		for k := range old {
			if _, ok := dev[k]; ok {
				return false
			}
		}
		took = time.Since(cont)
		return true
	})
	after := status(t, h).Catalog
	how := fmt.Sprintf("%d ring reads, %d gaps read as the whole list, %d of them first as what was signed since the last list", after.HintRingReads-before.HintRingReads, after.HintGaps-before.HintGaps, after.HintCatchUps-before.HintCatchUps)
	return took, how
}

// rotate gives simulated node s a new key, written as its meshd would
// (the entry, then the hint naming it once the catalog shows it).
func rotate(ctx context.Context, t *testing.T, c *api.Client, s *Sim) {
	t.Helper()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	s.Key = k.PublicKey()
	if err := Txn(ctx, c, s.Ops()); err != nil {
		t.Fatal(err)
	}
	if *hintFlag == "" {
		return
	}
	hint, err := hintFor(ctx, c, catalogsync.Hint{ConsulNode: s.Name(), ServiceID: s.Registration().ID()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := catalogsync.WriteHint(ctx, c, *hintFlag, hint); err != nil {
		t.Fatal(err)
	}
}

// hintFor is h as catalogsync.Announce writes it, with the index of a read
// of its instance and, but for a leave (h carries a withdrawal), the entry
// that read found.
func hintFor(ctx context.Context, c *api.Client, h catalogsync.Hint) (catalogsync.Hint, error) {
	e, index, err := catalogsync.ReadInstance(ctx, c, "meshd", h, nil)
	if err != nil {
		return h, err
	}
	h.Index = index
	if e != nil && h.Withdrawal == nil {
		h.Carried = catalogsync.Carry(*e)
	}
	return h, nil
}

// costRounds measures the host's CPU per change again over rounds pairs
// of windows, a window of changes (simulated nodes rotating their keys,
// each hinted, pace apart) and an idle one as long, in turn events first
// and idle first so that a drift of the idle cost cancels: per round, per
// host, (events - idle) / changes; the round's figure is the largest
// host's. It returns the rounds' figures and their idle costs per minute.
func costRounds(ctx context.Context, t *testing.T, c *api.Client, hosts []*meshHost, sims []Sim, changes int, pace time.Duration, rounds int) (perChange, idlePerMinute []time.Duration) {
	t.Helper()
	window := time.Duration(changes) * pace
	next := 0
	events := func() map[string]time.Duration {
		cpu0 := hostCPU(t, hosts)
		start := time.Now()
		for i := range changes {
			time.Sleep(time.Until(start.Add(time.Duration(i) * pace)))
			rotate(ctx, t, c, &sims[next%len(sims)])
			next++
		}
		time.Sleep(time.Until(start.Add(window)))
		return diffCPU(cpu0, hostCPU(t, hosts))
	}
	idle := func() map[string]time.Duration {
		cpu0 := hostCPU(t, hosts)
		time.Sleep(window)
		return diffCPU(cpu0, hostCPU(t, hosts))
	}
	for r := range rounds {
		var busy, quiet map[string]time.Duration
		if r%2 == 0 {
			busy, quiet = events(), idle()
		} else {
			quiet, busy = idle(), events()
		}
		var worst, idleMin time.Duration
		for i, h := range hosts {
			d := (busy[h.Name] - quiet[h.Name]) / time.Duration(changes) // may be below 0: noise
			if i == 0 || d > worst {
				worst = d
			}
			idleMin = max(idleMin, time.Duration(float64(quiet[h.Name])*float64(time.Minute)/float64(window)))
		}
		t.Logf("cost round %d of %d: host CPU per change %s (idle %s a minute)", r+1, rounds, worst.Round(10*time.Microsecond), idleMin.Round(time.Millisecond))
		perChange, idlePerMinute = append(perChange, worst), append(idlePerMinute, idleMin)
	}
	return perChange, idlePerMinute
}

func diffCPU(a, b map[string]time.Duration) map[string]time.Duration {
	out := map[string]time.Duration{}
	for k, v := range b {
		out[k] = v - a[k]
	}
	return out
}

// routeCounter counts the routes meshd adds in a namespace, from the
// kernel's notices of them (a dump every few milliseconds would take the
// CPU from what is measured).
type routeCounter struct {
	n    atomic.Int64
	mu   sync.Mutex
	want int64
	hit  chan struct{}
}

// countRoutes starts counting the routes of meshd's protocol added in
// namespace ns, until the test ends.
func countRoutes(t *testing.T, ns string) *routeCounter {
	h, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var stopping atomic.Bool // the socket's end is not an error
	ch := make(chan netlink.RouteUpdate, 4096)
	err = netlink.RouteSubscribeWithOptions(ch, done, netlink.RouteSubscribeOptions{Namespace: &h, ReceiveBufferSize: 8 << 20,
		ErrorCallback: func(err error) {
			if !stopping.Load() {
				t.Errorf("route notices in %s: %v", ns, err)
			}
		}})
	h.Close()
	if err != nil {
		t.Fatal(err)
	}
	rc := &routeCounter{want: -1}
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for u := range ch {
			if u.Type != unix.RTM_NEWROUTE || u.Protocol != netlinkx.RouteProtocol {
				continue
			}
			n := rc.n.Add(1)
			rc.mu.Lock()
			if rc.hit != nil && n >= rc.want {
				close(rc.hit)
				rc.hit = nil
			}
			rc.mu.Unlock()
		}
	}()
	t.Cleanup(func() { stopping.Store(true); close(done); <-finished })
	return rc
}

// all is closed once n routes were added.
func (rc *routeCounter) all(n int) <-chan struct{} {
	c := make(chan struct{})
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.n.Load() >= int64(n) {
		close(c)
		return c
	}
	rc.want, rc.hit = int64(n), c
	return c
}
