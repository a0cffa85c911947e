package testlab

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/vishvananda/netns"
)

var (
	consulOnce sync.Once
	consulPath string
	consulErr  error
)

// ConsulBin returns the path of the pinned consul binary: $MESHD_CONSUL_BIN,
// or what scripts/consul-bin prints (building it on first use).
func ConsulBin(t testing.TB) string {
	t.Helper()
	consulOnce.Do(func() {
		if p := os.Getenv("MESHD_CONSUL_BIN"); p != "" {
			consulPath = p
			return
		}
		root, err := moduleRoot()
		if err != nil {
			consulErr = err
			return
		}
		cmd := exec.Command(filepath.Join(root, "scripts", "consul-bin"))
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		if err != nil {
			consulErr = fmt.Errorf("scripts/consul-bin: %w", err)
			return
		}
		consulPath = strings.TrimSpace(string(out))
	})
	if consulErr != nil {
		t.Fatalf("no consul binary: %v", consulErr)
	}
	return consulPath
}

// moduleRoot finds the directory holding meshd's go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.Contains(string(b), "module meshd.dev/meshd\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("go.mod of meshd.dev/meshd not found above the working directory")
		}
		dir = parent
	}
}

// ModuleRoot is moduleRoot for tests that build meshd.
func ModuleRoot(t testing.TB) string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// Consul is one consul agent process.
type Consul struct {
	Name string
	// Netns is the namespace it runs in, or "" for the test's own.
	Netns string
	// HTTPAddr is its HTTP API address, as seen from inside Netns.
	HTTPAddr string
	// Token is the ACL token Client uses, if any.
	Token   string
	bin     string
	args    []string
	logPath string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// StartDevConsul runs a dev-mode Consul server on loopback with free ports,
// stopped when the test ends; hcl adds configuration (one -hcl each).
func StartDevConsul(t testing.TB, hcl ...string) *Consul {
	t.Helper()
	ports := freePorts(t, 4)
	c := &Consul{
		Name:     "dev",
		HTTPAddr: fmt.Sprintf("127.0.0.1:%d", ports[0]),
		bin:      ConsulBin(t),
		logPath:  filepath.Join(t.TempDir(), "consul.log"),
		args: []string{"agent", "-dev", "-node", "dev", "-bind", "127.0.0.1", "-client", "127.0.0.1",
			"-http-port", fmt.Sprint(ports[0]), "-serf-lan-port", fmt.Sprint(ports[1]),
			"-serf-wan-port", fmt.Sprint(ports[2]), "-server-port", fmt.Sprint(ports[3]),
			"-dns-port", "-1", "-grpc-port", "-1", "-hcl", "ports { grpc_tls = -1 }", "-log-level", "warn"},
	}
	for _, h := range hcl {
		c.args = append(c.args, "-hcl", h)
	}
	t.Cleanup(c.Kill)
	c.Start(t)
	c.WaitLeader(t)
	return c
}

// freePorts finds n ports free for both TCP and UDP on loopback (serf
// needs both).
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ports []int
	var closers []func()
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	for len(ports) < n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			l.Close()
			continue
		}
		closers = append(closers, func() { l.Close(); u.Close() })
		ports = append(ports, port)
	}
	return ports
}

// Start starts the agent (again, after Stop or Kill).
func (c *Consul) Start(t testing.TB) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd != nil {
		t.Fatalf("consul %s is already running", c.Name)
	}
	logf, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	argv := append([]string{c.bin}, c.args...)
	if c.Netns != "" {
		argv = append([]string{"ip", "netns", "exec", c.Netns}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// If the test binary dies, so does consul.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start consul %s: %v", c.Name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	c.cmd, c.done = cmd, done
}

// Pid is the agent's process ID (ip netns exec runs it in its own
// process), or 0 while it is not running.
func (c *Consul) Pid() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd == nil {
		return 0
	}
	return c.cmd.Process.Pid
}

// Stop ends the agent with SIGTERM and waits.
func (c *Consul) Stop() { c.signal(syscall.SIGTERM) }

// Kill ends the agent with SIGKILL and waits.
func (c *Consul) Kill() { c.signal(syscall.SIGKILL) }

func (c *Consul) signal(s syscall.Signal) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd == nil {
		return
	}
	c.cmd.Process.Signal(s)
	select {
	case <-c.done:
	case <-time.After(15 * time.Second):
		c.cmd.Process.Kill()
		<-c.done
	}
	c.cmd = nil
}

// Running reports whether the agent process runs.
func (c *Consul) Running() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cmd != nil
}

// bindAddr is the -bind address the agent was started with.
func (c *Consul) bindAddr() string {
	for i, a := range c.args {
		if a == "-bind" && i+1 < len(c.args) {
			return c.args[i+1]
		}
	}
	return ""
}

// Log returns what the agent printed, for failure messages.
func (c *Consul) Log() string {
	b, _ := os.ReadFile(c.logPath)
	return string(b)
}

// Client is an API client for this agent; for an agent in a namespace its
// connections are made from inside that namespace.
func (c *Consul) Client(t testing.TB) *api.Client {
	t.Helper()
	return c.ClientWithToken(t, c.Token)
}

// ClientWithToken is Client with another ACL token.
func (c *Consul) ClientWithToken(t testing.TB, token string) *api.Client {
	t.Helper()
	cfg := api.DefaultNonPooledConfig()
	cfg.Address = c.HTTPAddr
	cfg.Token = token
	if c.Netns != "" {
		cfg.Transport.DialContext = DialInNetns(c.Netns)
	}
	cl, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// WaitLeader waits until the agent's cluster has a leader and the agent
// answers catalog reads.
func (c *Consul) WaitLeader(t testing.TB) {
	t.Helper()
	cl := c.Client(t)
	deadline := time.Now().Add(60 * time.Second)
	for {
		leader, err := cl.Status().Leader()
		if err == nil && leader != "" {
			if _, _, err := cl.Catalog().Services(nil); err == nil {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("consul %s has no leader after 60s (last error %v); log:\n%s", c.Name, err, c.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// DialInNetns returns a dialer whose connections are made from inside the
// named network namespace. The socket keeps its namespace after the thread
// returns to the test's own.
func DialInNetns(name string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := InNetns(name, func() (err error) {
			var d net.Dialer
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// ListenPacketInNetns opens a packet socket inside the named namespace.
func ListenPacketInNetns(name, network, addr string) (net.PacketConn, error) {
	var c net.PacketConn
	err := InNetns(name, func() (err error) {
		c, err = net.ListenPacket(network, addr)
		return err
	})
	return c, err
}

// InNetns runs f on a thread inside the named namespace. Sockets f opens
// keep that namespace.
func InNetns(name string, f func() error) error {
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			ch <- err
			return
		}
		defer orig.Close()
		target, err := netns.GetFromName(name)
		if err != nil {
			ch <- err
			runtime.UnlockOSThread()
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			ch <- err
			runtime.UnlockOSThread()
			return
		}
		ch <- f()
		// A thread that cannot go back stays locked and dies with this
		// goroutine, instead of serving other goroutines in the wrong
		// namespace.
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
	}()
	return <-ch
}
