package testlab

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

var labSeq atomic.Int32

// Lab is a set of hosts on one underlay: network namespaces joined by veth
// pairs to a bridge in a namespace of the lab's own. The underlay is
// 198.18.0.0/24 (RFC 2544 benchmarking space), which exists only inside
// the lab's namespaces.
type Lab struct {
	t     testing.TB
	ID    string
	lanNS string
	dir   string

	// ConsulHCL is added to the configuration of every Consul agent the
	// lab starts from now on (e.g. to enable ACLs), and ConsulToken is the
	// token their Client uses.
	ConsulHCL   []string
	ConsulToken string

	mu    sync.Mutex
	hosts []*Host
	procs []*Proc
	next  int
}

// Host is one namespace on the lab's underlay.
type Host struct {
	Lab   *Lab
	Name  string
	Netns string
	// Addr is the host's underlay address.
	Addr netip.Addr
	Dir  string
	// Consul is the host's Consul agent, if started.
	Consul *Consul
}

// NewLab makes an empty lab, removed when the test ends.
func NewLab(t testing.TB) *Lab {
	t.Helper()
	RequireRoot(t)
	sweep()
	l := &Lab{
		t:   t,
		ID:  fmt.Sprintf("%s%dx%d", nsPrefix, os.Getpid(), labSeq.Add(1)),
		dir: t.TempDir(),
	}
	l.lanNS = l.ID + "-lan"
	t.Cleanup(l.cleanup)
	l.must("ip", "netns", "add", l.lanNS)
	l.must("ip", "-n", l.lanNS, "link", "add", "br0", "type", "bridge")
	l.must("ip", "-n", l.lanNS, "link", "set", "br0", "up")
	return l
}

func (l *Lab) must(argv ...string) {
	l.t.Helper()
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		l.t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out)
	}
}

func (l *Lab) cleanup() {
	l.mu.Lock()
	procs, hosts := l.procs, l.hosts
	l.mu.Unlock()
	for _, p := range procs {
		p.Kill()
	}
	for _, h := range hosts {
		if h.Consul != nil {
			h.Consul.Kill()
		}
		removeNetns(h.Netns)
	}
	removeNetns(l.lanNS)
}

// AddHost adds a namespace called name (a short label) to the underlay.
func (l *Lab) AddHost(name string) *Host {
	l.t.Helper()
	l.mu.Lock()
	l.next++
	n := l.next
	l.mu.Unlock()
	h := &Host{
		Lab:   l,
		Name:  name,
		Netns: l.ID + "-" + name,
		Addr:  netip.AddrFrom4([4]byte{198, 18, 0, byte(n)}),
		Dir:   filepath.Join(l.dir, name),
	}
	if err := os.MkdirAll(h.Dir, 0o700); err != nil {
		l.t.Fatal(err)
	}
	l.mu.Lock()
	l.hosts = append(l.hosts, h)
	l.mu.Unlock()
	veth := fmt.Sprintf("v%d", n)
	l.must("ip", "netns", "add", h.Netns)
	l.must("ip", "-n", l.lanNS, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", h.Netns)
	l.must("ip", "-n", l.lanNS, "link", "set", veth, "master", "br0", "up")
	l.must("ip", "-n", h.Netns, "link", "set", "lo", "up")
	l.must("ip", "-n", h.Netns, "addr", "add", h.Addr.String()+"/24", "dev", "eth0")
	l.must("ip", "-n", h.Netns, "link", "set", "eth0", "up")
	return h
}

// StartConsulServer adds a host running a single Consul server (dev mode:
// in memory, its own leader) and waits for it to lead.
func (l *Lab) StartConsulServer(name string) *Consul {
	l.t.Helper()
	h := l.AddHost(name)
	c := &Consul{
		Name:     name,
		Netns:    h.Netns,
		HTTPAddr: "127.0.0.1:8500",
		bin:      ConsulBin(l.t),
		logPath:  filepath.Join(h.Dir, "consul.log"),
		args: []string{"agent", "-dev", "-node", name, "-bind", h.Addr.String(), "-client", "127.0.0.1",
			"-dns-port", "-1", "-grpc-port", "-1", "-hcl", "ports { grpc_tls = -1 }", "-log-level", "warn"},
	}
	l.configure(c)
	h.Consul = c
	c.Start(l.t)
	c.WaitLeader(l.t)
	return c
}

// configure applies the lab's Consul settings to an agent before it starts.
func (l *Lab) configure(c *Consul) {
	for _, hcl := range l.ConsulHCL {
		c.args = append(c.args, "-hcl", hcl)
	}
	c.Token = l.ConsulToken
}

// StartConsulCluster adds n hosts running Consul servers (persistent data,
// not dev mode) that form one cluster, and waits for a leader.
func (l *Lab) StartConsulCluster(n int) []*Consul {
	l.t.Helper()
	var hosts []*Host
	for i := 1; i <= n; i++ {
		hosts = append(hosts, l.AddHost(fmt.Sprintf("s%d", i)))
	}
	var servers []*Consul
	for _, h := range hosts {
		args := []string{"agent", "-server", "-bootstrap-expect", fmt.Sprint(n), "-node", h.Name,
			"-data-dir", filepath.Join(h.Dir, "consul-data"), "-bind", h.Addr.String(), "-client", "127.0.0.1",
			"-disable-host-node-id", "-dns-port", "-1", "-grpc-port", "-1",
			"-hcl", "ports { grpc_tls = -1 }", "-hcl", "performance { raft_multiplier = 1 }", "-log-level", "warn"}
		for _, o := range hosts {
			if o != h {
				args = append(args, "-retry-join", o.Addr.String())
			}
		}
		c := &Consul{Name: h.Name, Netns: h.Netns, HTTPAddr: "127.0.0.1:8500", bin: ConsulBin(l.t),
			logPath: filepath.Join(h.Dir, "consul.log"), args: args}
		l.configure(c)
		h.Consul = c
		c.Start(l.t)
		servers = append(servers, c)
	}
	for _, c := range servers {
		c.WaitLeader(l.t)
	}
	return servers
}

// Leader returns the server that leads the cluster now.
func Leader(t testing.TB, servers []*Consul) *Consul {
	t.Helper()
	var leader *Consul
	Eventually(t, 60*time.Second, "the cluster elects a leader", func() bool {
		for _, c := range servers {
			if !c.Running() {
				continue
			}
			addr, err := c.Client(t).Status().Leader()
			if err != nil || addr == "" {
				continue
			}
			for _, s := range servers {
				if s.Running() && strings.HasPrefix(addr, s.bindAddr()+":") {
					leader = s
					return true
				}
			}
		}
		return false
	})
	return leader
}

// StartConsulClient runs a Consul client agent on h, joined to servers, as
// every production host has, and waits until it can read the catalog.
func (h *Host) StartConsulClient(servers ...*Consul) *Consul {
	h.Lab.t.Helper()
	args := []string{"agent", "-node", h.Name, "-data-dir", filepath.Join(h.Dir, "consul-data"),
		"-bind", h.Addr.String(), "-client", "127.0.0.1",
		"-disable-host-node-id", "-dns-port", "-1", "-grpc-port", "-1", "-hcl", "ports { grpc_tls = -1 }",
		"-log-level", "warn"}
	for _, s := range servers {
		args = append(args, "-retry-join", s.bindAddr())
	}
	c := &Consul{
		Name:     h.Name,
		Netns:    h.Netns,
		HTTPAddr: "127.0.0.1:8500",
		bin:      ConsulBin(h.Lab.t),
		logPath:  filepath.Join(h.Dir, "consul.log"),
		args:     args,
	}
	h.Lab.configure(c)
	h.Consul = c
	c.Start(h.Lab.t)
	c.WaitLeader(h.Lab.t)
	return c
}

// Command returns a command that runs argv inside h's namespace.
func (h *Host) Command(argv ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", h.Netns}, argv...)...)
}

// Exec runs argv in h's namespace and returns its combined output.
func (h *Host) Exec(argv ...string) (string, error) {
	out, err := h.Command(argv...).CombinedOutput()
	return string(out), err
}

// Ping sends one ICMPv6 echo from h to addr and reports whether it came back
// within a second.
func (h *Host) Ping(addr netip.Addr) bool {
	_, err := h.Exec("ping", "-n", "-q", "-c", "1", "-W", "1", addr.String())
	return err == nil
}

// Proc is a background process in a host.
type Proc struct {
	Cmd     *exec.Cmd
	LogPath string
	done    chan struct{}
	err     error
}

// Start runs argv in h's namespace in the background, its output going to
// a log file; it is killed when the test ends.
func (h *Host) Start(logName string, argv ...string) *Proc {
	h.Lab.t.Helper()
	logPath := filepath.Join(h.Dir, logName)
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		h.Lab.t.Fatal(err)
	}
	defer f.Close()
	cmd := h.Command(argv...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		h.Lab.t.Fatalf("start %v in %s: %v", argv, h.Name, err)
	}
	p := &Proc{Cmd: cmd, LogPath: logPath, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	h.Lab.mu.Lock()
	h.Lab.procs = append(h.Lab.procs, p)
	h.Lab.mu.Unlock()
	return p
}

// Signal sends s to the process.
func (p *Proc) Signal(s os.Signal) { p.Cmd.Process.Signal(s) }

// Kill ends the process with SIGKILL and waits.
func (p *Proc) Kill() {
	p.Cmd.Process.Kill()
	<-p.done
}

// Wait waits up to timeout for the process to exit; exited is false on
// timeout, and err is how it exited.
func (p *Proc) Wait(timeout time.Duration) (exited bool, err error) {
	select {
	case <-p.done:
		return true, p.err
	case <-time.After(timeout):
		return false, nil
	}
}

// Log returns what the process printed.
func (p *Proc) Log() string {
	b, _ := os.ReadFile(p.LogPath)
	return string(bytes.TrimSpace(b))
}

// Eventually polls cond every 50ms until it holds or timeout passes. If
// why is given, the failure message includes what it says last.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool, why ...*string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			if len(why) > 0 {
				t.Fatalf("after %s: %s: last seen: %s", timeout, what, *why[0])
			}
			t.Fatalf("after %s: %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
