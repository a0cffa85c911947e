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
	"meshd.dev/meshd/internal/trusttest"
	"meshd.dev/meshd/netlinkx"
)

var (
	sizesFlag         = flag.String("sizes", "100", "comma-separated catalog sizes (simulated nodes)")
	eventsFlag        = flag.Int("events", 8, "events per size: join, rotate, endpoint change, leave in turn")
	hostsFlag         = flag.Int("hosts", 2, "real meshd hosts, each with its own Consul client agent")
	idleFlag          = flag.Duration("idle", 10*time.Second, "idle catalog at the end: kernel writes must stay 0")
	classicFlag       = flag.Bool("classic", true, "run the classic approach (consul-template + wg syncconf) too")
	timeoutFlag       = flag.Duration("event-timeout", 60*time.Second, "how long an event may take to converge")
	outFlag           = flag.String("out", "", "write the report (markdown) to this file")
	plotFlag          = flag.String("plot", "", "write the latency CDF of the largest size (PNG) to this file")
	profileFlag       = flag.String("cpuprofile", "", "save a CPU profile of the first meshd host during the events of the largest size")
	syncProfFlag      = flag.String("sync-cpuprofile", "", "save a CPU profile of the fresh meshd host's first seconds (its initial sync) at the largest size")
	hintFlag          = flag.String("hint-key", "meshd/hint", "meshd's consul.hint_key, written for each event by its writer (empty: no hints)")
	paceFlag          = flag.Duration("pace", 0, "events start at least this far apart")
	floorFlag         = flag.Bool("floor", true, "run the floor (and the hint key's timing) on every meshd host's agent; off when measuring the agent's CPU, which they would add to")
	fullReadFlag      = flag.Duration("full-read-interval", time.Minute, "meshd's catalog.full_read_interval (the catalog's fill, unhinted, shows at the next full read)")
	sectionFlag       = flag.String("out-section", "", "write the results and targets alone (markdown, a section for BENCHMARKS.md) to this file")
	missedFlag        = flag.Duration("missed-stop", 30*time.Second, "after the last size (and those of -missed-sizes), how long a meshd host is stopped while changes it misses are made (0: no such phase)")
	missedAtFlag      = flag.String("missed-sizes", "", "comma-separated sizes after which the missed-changes phase runs too (it always runs after the last)")
	logLevelFlag      = flag.String("meshd-log-level", "warn", "log_level of the meshd hosts (their logs stay in the lab directory)")
	roundsFlag        = flag.Int("cost-rounds", 0, "after the events of each size, measure the host's CPU per change again over this many pairs of windows (changes, then idle as long; the next pair idle first), and report their median")
	folderFlag        = flag.Bool("revocations-folder", true, "create the revocations folder in KV first, as a fleet's setup does (meshd authority revoke --init); without it every KV write, each hint, wakes every host's watch of it")
	roundsChangesFlag = flag.Int("cost-round-changes", 60, "changes per window of -cost-rounds")
	roundsPaceFlag    = flag.Duration("cost-round-pace", time.Second, "changes of -cost-rounds start this far apart (more changes a window average the machine's noise over more)")
)

func TestMain(m *testing.M) { testlab.Main(m) }

// target is one kernel that must converge: a WireGuard device, probed
// by packets during an event (see probe), and for meshd hosts the route to
// the probe's prefix in its namespace, looked up every millisecond.
type target struct {
	system string
	name   string
	iface  string
	nsName string
	probe  *prober

	mu       sync.Mutex
	route    *routeCond // the pending event's route condition
	done     time.Time  // when it first held
	periods  []time.Duration
	lastLook time.Time
}

// routeCond is a route meshd must have added (want) or deleted.
type routeCond struct {
	prefix netip.Prefix
	want   bool
}

// device is one read of a device: its peers by key.
type device map[wgtypes.Key]wgtypes.Peer

// has reports whether the device holds sim as it is.
func (d device) has(sim Sim) bool {
	p, ok := d[sim.Key]
	return ok && p.Endpoint != nil && p.Endpoint.String() == sim.Endpoint.String() && len(p.AllowedIPs) == 1 && p.AllowedIPs[0].String() == sim.Prefix.String()
}

// same reports whether two reads show the same peers.
func (d device) same(o device) bool {
	if len(d) != len(o) {
		return false
	}
	for k, p := range d {
		q, ok := o[k]
		if !ok || fmt.Sprint(p.Endpoint, p.AllowedIPs, p.PersistentKeepaliveInterval) != fmt.Sprint(q.Endpoint, q.AllowedIPs, q.PersistentKeepaliveInterval) {
			return false
		}
	}
	return true
}

// deviceReads serializes device reads: reads of large devices would
// otherwise take the CPU (and the devices' locks) from the systems
// measured.
var deviceReads sync.Mutex

// read reads the target's device from outside, then pauses as long as the
// read took (at most 200 ms), leaving the CPU to the systems measured. It
// returns when the device answered (readUAPI): it held what the read shows
// by then.
func (tg *target) read() (device, time.Time, error) {
	deviceReads.Lock()
	start := time.Now()
	d, answered, err := readUAPI(tg.iface)
	end := time.Now()
	deviceReads.Unlock()
	time.Sleep(min(end.Sub(start), 200*time.Millisecond))
	return d, answered, err
}

// pollRoutes looks up the route of the pending event's condition every
// millisecond until ctx ends; a target without a namespace has no route
// conditions.
func (tg *target) pollRoutes(ctx context.Context, t *testing.T) {
	ns, err := netns.GetFromName(tg.nsName)
	if err != nil {
		t.Error(err)
		return
	}
	defer ns.Close()
	handle, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Error(err)
		return
	}
	defer handle.Close()
	for ctx.Err() == nil {
		tg.mu.Lock()
		cond := tg.route
		pending := cond != nil && tg.done.IsZero()
		tg.mu.Unlock()
		if !pending {
			time.Sleep(5 * time.Millisecond)
			continue
		}
		ok := routed(handle, tg.iface, cond.prefix) == cond.want
		now := time.Now()
		tg.mu.Lock()
		if tg.route == cond {
			if !tg.lastLook.IsZero() {
				tg.periods = append(tg.periods, now.Sub(tg.lastLook))
			}
			tg.lastLook = now
			if ok {
				tg.done = now
			}
		}
		tg.mu.Unlock()
		time.Sleep(time.Millisecond)
	}
}

// routed reports whether meshd's route (its protocol tag) to p leads into
// the link: the supernet route the benchmark adds is not meshd's.
func routed(handle *netlink.Handle, iface string, p netip.Prefix) bool {
	link, err := handle.LinkByName(iface)
	if err != nil {
		return false
	}
	rs, err := handle.RouteGet(p.Addr().AsSlice())
	return err == nil && len(rs) > 0 && rs[0].LinkIndex == link.Attrs().Index && rs[0].Protocol == netlinkx.RouteProtocol
}

// arm sets the route condition of the next event (nil: none).
func (tg *target) arm(c *routeCond) {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	tg.route, tg.done, tg.lastLook = c, time.Time{}, time.Time{}
}

// routeDone reports when the route condition held (ok false: not yet).
func (tg *target) routeDone() (time.Time, bool) {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	if tg.route == nil {
		return time.Time{}, true
	}
	return tg.done, !tg.done.IsZero()
}

// medianPeriod is the median time between two route looks within an
// event since the last call.
func (tg *target) medianPeriod() time.Duration {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	p := Quantile(tg.periods, 0.5)
	tg.periods = nil
	return p
}

// blockingQuery is a bare blocking query through a host's own agent,
// recording when each call returns with a new index: on the endpoint meshd
// watches, it is the floor; on the hint key, when meshd is woken.
type blockingQuery struct {
	path string // with its query string, without the index

	mu    sync.Mutex
	wakes []time.Time
}

const floorPath = "/v1/health/service/meshd?stale&wait=5m"

func (f *blockingQuery) run(ctx context.Context, nsName string) {
	client := &http.Client{Transport: &http.Transport{DialContext: testlab.DialInNetns(nsName)}}
	var index uint64
	for ctx.Err() == nil {
		url := fmt.Sprintf("http://127.0.0.1:8500%s&index=%d", f.path, index)
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

// lastWake is when the last of qs woke after t (zero: one has not yet).
func lastWake(qs []*blockingQuery, t time.Time) time.Time {
	var last time.Time
	for _, q := range qs {
		w := q.wakeAfter(t)
		if w.IsZero() {
			return w
		}
		last = maxTime(last, w)
	}
	return last
}

// wakeAfter is the first wake at or after t.
func (f *blockingQuery) wakeAfter(t time.Time) time.Time {
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
// 5m it would measure the grace); the breaker stays on. max_peers is
// above any size (its default, 25,000, would cap the largest).
func startMeshHost(t *testing.T, lab *testlab.Lab, server *testlab.Consul, bin, name string, n int) *meshHost {
	h := lab.AddHost(name)
	h.StartConsulClient(server)
	return startMeshHostOn(t, h, bin, n)
}

// classicPrefixID numbers the classic host's prefix (hostPrefix).
const classicPrefixID = 0xff

// hostPrefix is the prefix of the benchmark's real host number n.
func hostPrefix(n int) netip.Prefix { return netip.MustParsePrefix(fmt.Sprintf("fdaa:0:%x::/48", n)) }

// startMeshHostOn runs meshd on h, with prefix hostPrefix(n).
func startMeshHostOn(t *testing.T, h *testlab.Host, bin string, n int) *meshHost {
	name := h.Name
	mh := &meshHost{Host: h, iface: fmt.Sprintf("wb%d%s", os.Getpid()%1000, name),
		config: filepath.Join(h.Dir, "meshd.yaml"), sock: filepath.Join(h.Dir, "meshd.sock")}
	cfg := fmt.Sprintf("node_name: %s\ninterface: %s\nendpoint: %s:51820\nprefix: %s\nstate_dir: %s\nstatus_socket: %s\nremoval_grace: 0s\nmax_peers: 1000000\nlog_level: %s\ncatalog:\n  full_read_interval: %s\nconsul:\n  address: 127.0.0.1:8500\n  hint_key: %q\ntrust:\n  authorities: %s\n",
		name, mh.iface, h.Addr, hostPrefix(n), filepath.Join(h.Dir, "state"), mh.sock, *logLevelFlag, *fullReadFlag, *hintFlag, trusttest.PublicKey())
	if err := os.WriteFile(mh.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	trusttest.Provision(t, trusttest.Authority(), filepath.Join(h.Dir, "state"), name, hostPrefix(n).String(), "")
	mh.proc = h.Start("meshd.log", bin, "run", "--config", mh.config)
	return mh
}

// startClassic runs what a user would run instead of meshd: consul-template
// watching the same nodes in KV through the host's own agent, rendering a
// WireGuard configuration of every node and applying it with wg syncconf to
// a userspace device.
func startClassic(t *testing.T, lab *testlab.Lab, server *testlab.Consul, bin string) (*testlab.Host, string, wgtypes.Key) {
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
	return h, iface, key.PublicKey()
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
