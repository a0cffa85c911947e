package bench

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/agent"
	"meshd.dev/meshd/control"
	"meshd.dev/meshd/internal/testlab"
)

var (
	sizesFlag    = flag.String("sizes", "100", "comma-separated catalog sizes (simulated nodes)")
	eventsFlag   = flag.Int("events", 8, "events per size: join, rotate, endpoint change, leave in turn")
	hostsFlag    = flag.Int("hosts", 2, "real meshd hosts, each with its own Consul client agent")
	idleFlag     = flag.Duration("idle", 10*time.Second, "idle catalog at the end: kernel writes must stay 0")
	classicFlag  = flag.Bool("classic", true, "run the classic approach (consul-template + wg syncconf) too")
	timeoutFlag  = flag.Duration("event-timeout", 60*time.Second, "how long an event may take to converge")
	outFlag      = flag.String("out", "", "write the report (markdown) to this file")
	plotFlag     = flag.String("plot", "", "write the latency CDF of the largest size (PNG) to this file")
	profileFlag  = flag.String("cpuprofile", "", "save a CPU profile of the first meshd host during the events of the largest size")
	logLevelFlag = flag.String("meshd-log-level", "warn", "log_level of the meshd hosts (their logs stay in the lab directory)")
)

func TestMain(m *testing.M) { testlab.Main(m) }

// target is one kernel that must converge: a device, read continuously
// from outside meshd, and for meshd hosts the routes in its namespace.
type target struct {
	system string
	name   string
	iface  string
	nsName string

	mu       sync.Mutex
	cond     func(*snapshot) bool // the pending event's condition
	refresh  bool                 // read once more though no event is pending
	done     time.Time            // when cond first held
	periods  []time.Duration      // time between consecutive device reads within an event
	lastRead time.Time
	last     *snapshot
}

// snapshot is one look at a target's kernel. The device is read when
// first needed: a route check costs one netlink request, a device of
// 10,000 peers a read of them all.
type snapshot struct {
	readDevice func() map[wgtypes.Key]wgtypes.Peer
	once       sync.Once
	peersRead  map[wgtypes.Key]wgtypes.Peer
	routes     func(netip.Prefix) bool // reports whether the prefix is routed into the link
	// at, when set by a condition, is when the decisive observation was
	// made (else: when the look ended).
	at time.Time
	// readEnd is when the device read ended (before the pause that
	// follows it): what a device read shows, it showed by then.
	readEnd time.Time
}

func (s *snapshot) peers() map[wgtypes.Key]wgtypes.Peer {
	s.once.Do(func() { s.peersRead = s.readDevice() })
	return s.peersRead
}

// has reports whether the kernel holds sim as it is; withRoute checks its
// route first (meshd adds a route after its peer, so a missing route spares
// the device read).
//
// With the route, the route is what times the change: meshd writes it after
// the peer, so the peer was there first; the device read that follows only
// confirms it (reading 10,000 peers takes longer than the change itself).
func (s *snapshot) has(sim Sim, withRoute bool) bool {
	var routed time.Time
	if withRoute {
		if !s.routes(sim.Prefix) {
			return false
		}
		routed = time.Now()
	}
	p, ok := s.peers()[sim.Key]
	ok = ok && p.Endpoint != nil && p.Endpoint.String() == sim.Endpoint.String() && len(p.AllowedIPs) == 1 && p.AllowedIPs[0].String() == sim.Prefix.String()
	if ok && withRoute {
		s.at = routed
	}
	return ok
}

// gone reports whether the kernel no longer holds the node; withRoute
// checks its route first (meshd deletes the route before the peer).
func (s *snapshot) gone(key wgtypes.Key, prefix netip.Prefix, withRoute bool) bool {
	if withRoute && s.routes(prefix) {
		return false
	}
	_, ok := s.peers()[key]
	return !ok
}

// deviceReads serializes the targets' device reads.
var deviceReads sync.Mutex

// poll reads the target's kernel state until ctx ends.
func (tg *target) poll(ctx context.Context, t *testing.T) {
	var handle *netlink.Handle
	if tg.nsName != "" {
		ns, err := netns.GetFromName(tg.nsName)
		if err != nil {
			t.Error(err)
			return
		}
		defer ns.Close()
		if handle, err = netlink.NewHandleAt(ns); err != nil {
			t.Error(err)
			return
		}
		defer handle.Close()
	}
	for ctx.Err() == nil {
		// Read continuously only while an event is pending (or nothing was
		// read yet): a poll of a large device costs CPU the systems
		// measured would otherwise have.
		tg.mu.Lock()
		idle := tg.cond == nil && tg.last != nil && !tg.refresh
		first := tg.last == nil
		tg.refresh = false
		tg.mu.Unlock()
		if idle {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		// Until the device exists; after that, a look reads only what its
		// condition needs (a route check must not wait for a device read).
		if first {
			if _, err := ReadUAPI(tg.iface); err != nil {
				time.Sleep(10 * time.Millisecond)
				continue
			}
		}
		s := &snapshot{}
		s.readDevice = func() map[wgtypes.Key]wgtypes.Peer {
			// One device read at a time across all targets, each followed by
			// a pause as long as the read: reads of large devices would
			// otherwise take the CPU (and the devices' locks) from the
			// systems measured.
			deviceReads.Lock()
			readStart := time.Now()
			defer func() {
				end := time.Now()
				s.readEnd = end
				d := end.Sub(readStart)
				deviceReads.Unlock()
				// The resolution: time between two reads of this device
				// that follow each other within an event.
				tg.mu.Lock()
				if !tg.lastRead.IsZero() && end.Sub(tg.lastRead) < time.Second {
					tg.periods = append(tg.periods, end.Sub(tg.lastRead))
				}
				tg.lastRead = end
				tg.mu.Unlock()
				// (A read that waited behind a long write of the system
				// measured took no CPU meanwhile: the pause is capped.)
				time.Sleep(min(d, 200*time.Millisecond))
			}()
			out, err := ReadUAPI(tg.iface)
			if err != nil {
				return map[wgtypes.Key]wgtypes.Peer{}
			}
			return out
		}
		s.routes = func(p netip.Prefix) bool {
			if handle == nil {
				return false
			}
			link, err := handle.LinkByName(tg.iface)
			if err != nil {
				return false
			}
			rs, err := handle.RouteGet(p.Addr().AsSlice())
			return err == nil && len(rs) > 0 && rs[0].LinkIndex == link.Attrs().Index
		}
		tg.mu.Lock()
		cond := tg.cond
		tg.mu.Unlock()
		if cond == nil {
			s.peers() // a full look, for snapshot()
		}
		ok := cond != nil && cond(s)
		now := time.Now()
		tg.mu.Lock()
		tg.last = s
		if ok && tg.cond != nil && tg.done.IsZero() {
			switch {
			case !s.at.IsZero():
				tg.done = s.at
			case !s.readEnd.IsZero():
				tg.done = s.readEnd
			default:
				tg.done = now
			}
		}
		tg.mu.Unlock()
		// Leave the CPU to the systems measured for a moment.
		time.Sleep(time.Millisecond)
	}
}

func (tg *target) arm(cond func(*snapshot) bool) {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	tg.cond, tg.done = cond, time.Time{}
}

func (tg *target) result() time.Time {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	return tg.done
}

// snapshot returns a state read after the call.
func (tg *target) snapshot() *snapshot {
	tg.mu.Lock()
	prev := tg.last
	tg.refresh = true
	tg.mu.Unlock()
	for {
		tg.mu.Lock()
		last := tg.last
		tg.mu.Unlock()
		if last != prev && last != nil {
			return last
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (tg *target) medianPeriod() time.Duration {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	p := Quantile(tg.periods, 0.5)
	tg.periods = nil
	return p
}

// floor is a bare blocking query on the endpoint meshd watches, through a
// meshd host's own agent, recording when each call returns.
type floor struct {
	mu    sync.Mutex
	wakes []time.Time
}

func (f *floor) run(ctx context.Context, nsName string) {
	client := &http.Client{Transport: &http.Transport{DialContext: testlab.DialInNetns(nsName)}}
	var index uint64
	for ctx.Err() == nil {
		url := fmt.Sprintf("http://127.0.0.1:8500/v1/health/service/meshd?stale&wait=5m&index=%d", index)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		req.Header.Set("Accept-Encoding", "identity") // as meshd asks: no compression on loopback
		resp, err := client.Do(req)
		if err != nil {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		now := time.Now()
		got, _ := strconv.ParseUint(resp.Header.Get("X-Consul-Index"), 10, 64)
		if got != index {
			f.mu.Lock()
			f.wakes = append(f.wakes, now)
			f.mu.Unlock()
		}
		if got < index {
			index = 0
		} else {
			index = got
		}
	}
}

// wakeAfter is the first wake at or after t.
func (f *floor) wakeAfter(t time.Time) time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, w := range f.wakes {
		if !w.Before(t) {
			return w
		}
	}
	return time.Time{}
}

// consulTemplatePath is the consul-template binary in use.
var consulTemplatePath string

type meshHost struct {
	*testlab.Host
	iface, config, sock string
	proc                *testlab.Proc
}

func buildMeshd(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "meshd")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/meshd")
	cmd.Dir = testlab.ModuleRoot(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v: %s", err, out)
	}
	return bin
}

// startMeshHost runs meshd on a new host. removal_grace is 0 so that a
// leave shows in the kernel as soon as meshd applies it (with the default
// 5m it would measure the grace); the breaker stays on.
func startMeshHost(t *testing.T, lab *testlab.Lab, server *testlab.Consul, bin, name string, n int) *meshHost {
	h := lab.AddHost(name)
	h.StartConsulClient(server)
	return startMeshHostOn(t, h, bin, n)
}

// startMeshHostOn runs meshd on h, with prefix fdaa:0:<n>::/48.
func startMeshHostOn(t *testing.T, h *testlab.Host, bin string, n int) *meshHost {
	name := h.Name
	mh := &meshHost{Host: h, iface: fmt.Sprintf("wb%d%s", os.Getpid()%1000, name),
		config: filepath.Join(h.Dir, "meshd.yaml"), sock: filepath.Join(h.Dir, "meshd.sock")}
	cfg := fmt.Sprintf("node_name: %s\ninterface: %s\nendpoint: %s:51820\nprefix: fdaa:0:%x::/48\nstate_dir: %s\nstatus_socket: %s\nremoval_grace: 0s\nlog_level: %s\nconsul:\n  address: 127.0.0.1:8500\n",
		name, mh.iface, h.Addr, n, filepath.Join(h.Dir, "state"), mh.sock, *logLevelFlag)
	if err := os.WriteFile(mh.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	mh.proc = h.Start("meshd.log", bin, "run", "--config", mh.config)
	return mh
}

// startClassic runs what a user would run instead of meshd: consul-template
// watching the same nodes in KV through the host's own agent, rendering a
// WireGuard configuration of every node and applying it with wg syncconf to
// a userspace device.
func startClassic(t *testing.T, lab *testlab.Lab, server *testlab.Consul, bin string) (*testlab.Host, string) {
	h := lab.AddHost("classic")
	h.StartConsulClient(server)
	iface := fmt.Sprintf("wb%dct", os.Getpid()%1000)
	out, err := exec.Command(filepath.Join(testlab.ModuleRoot(t), "scripts", "consul-template-bin")).Output()
	if err != nil {
		t.Fatalf("scripts/consul-template-bin: %v", err)
	}
	ctBin := strings.TrimSpace(string(out))
	consulTemplatePath = ctBin
	if out, err := h.Exec("sh", "-c", fmt.Sprintf("setsid %s wireguard-userspace %s 1420 >%s/wg.log 2>&1 </dev/null &", bin, iface, h.Dir)); err != nil {
		t.Fatalf("start classic device: %v: %s", err, out)
	}
	key, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(h.Dir, "wg.conf")
	tmpl := fmt.Sprintf(`consul {
  address = "127.0.0.1:8500"
}
log_level = "warn"
template {
  destination = %q
  perms = 0600
  command = "wg syncconf %s %s"
  contents = <<EOT
[Interface]
PrivateKey = %s
ListenPort = 51820
{{ range tree "bench/classic" }}{{ with .Value | parseJSON }}
[Peer]
PublicKey = {{ .public_key }}
Endpoint = {{ .endpoint }}
AllowedIPs = {{ .prefix }}
{{ end }}{{ end }}
EOT
}
`, conf, iface, conf, key)
	hcl := filepath.Join(h.Dir, "consul-template.hcl")
	if err := os.WriteFile(hcl, []byte(tmpl), 0o600); err != nil {
		t.Fatal(err)
	}
	testlab.Eventually(t, 20*time.Second, "classic device up", func() bool {
		_, err := h.Exec("wg", "show", iface)
		return err == nil
	})
	h.Start("consul-template.log", ctBin, "-config", hcl)
	t.Cleanup(func() { h.Exec("ip", "link", "del", iface) })
	return h, iface
}

type procStat struct {
	cpu time.Duration
	hwm uint64
}

// readProc reads a process's CPU time (user+system) and peak RSS.
func readProc(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	ut, _ := strconv.ParseUint(f[11], 10, 64)
	st, _ := strconv.ParseUint(f[12], 10, 64)
	ps := procStat{cpu: time.Duration(ut+st) * 10 * time.Millisecond} // USER_HZ is 100
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ps, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			ps.hwm = kb << 10
		}
	}
	return ps, nil
}

func rxBytes(t *testing.T, h *testlab.Host) uint64 {
	out, err := h.Exec("cat", "/sys/class/net/eth0/statistics/rx_bytes")
	if err != nil {
		t.Fatalf("rx bytes of %s: %v", h.Name, err)
	}
	n, _ := strconv.ParseUint(strings.TrimSpace(out), 10, 64)
	return n
}

func status(t *testing.T, h *meshHost) agent.Status {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var st agent.Status
	if err := control.Status(ctx, h.sock, &st); err != nil {
		t.Fatalf("status of %s: %v", h.Name, err)
	}
	return st
}
