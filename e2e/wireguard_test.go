package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/internal/testlab"
	"meshd.dev/meshd/netlinkx"
)

// The suite runs in one of two modes. By default (make unit) every link is
// whatever the machine gives: here, with no WireGuard module, userspace
// devices. With MESHD_E2E_WIREGUARD=kernel (make kernel runs the suite so,
// inside scripts/vm on Debian's kernel) every link meshd or wg-quick makes
// must be a kernel wireguard link and no userspace device process may
// exist: a silent fallback to userspace fails the test.
const wireguardEnv = "MESHD_E2E_WIREGUARD"

// meshdBinEnv names a meshd binary built beforehand (make kernel builds one:
// the VM cannot run go build on its read-only root).
const meshdBinEnv = "MESHD_E2E_MESHD"

func kernelSuite() bool { return os.Getenv(wireguardEnv) == "kernel" }

// budget is a convergence target of the product (e.g. a laptop reaches a
// host within 2 s of create returning) as the suite checks it here: as is on
// this machine, five times as long inside scripts/vm, where qemu emulates
// every instruction in software (TCG) and wg-quick, ping and meshd run
// several times slower. The measured time is logged either way.
func budget(d time.Duration) time.Duration {
	if kernelSuite() {
		return 5 * d
	}
	return d
}

// suiteMode is the mode a link gets unless its configuration says otherwise.
func suiteMode() netlinkx.Mode {
	if kernelSuite() {
		return netlinkx.ModeKernel
	}
	return netlinkx.ModeAuto
}

// deviceIn reads WireGuard device name as the kernel of namespace ns (or
// its userspace device) has it: a kernel device answers only in its own
// namespace.
func deviceIn(ns, name string) (*wgtypes.Device, error) {
	var wg *wgctrl.Client
	if err := testlab.InNetns(ns, func() (err error) {
		wg, err = wgctrl.New()
		return err
	}); err != nil {
		return nil, err
	}
	defer wg.Close()
	return wg.Device(name)
}

var logKernel sync.Once

// checkLink fails the test unless iface in h's namespace is a WireGuard
// link of mode want (ModeAuto: kernel or userspace, whichever the machine
// gave), and logs what it is.
func checkLink(t *testing.T, h *testlab.Host, iface string, want netlinkx.Mode) {
	t.Helper()
	logKernel.Do(func() {
		var u unix.Utsname
		if err := unix.Uname(&u); err == nil {
			_, mod := os.Stat("/sys/module/wireguard")
			t.Logf("kernel %s, wireguard module loaded: %v, suite mode %s", unix.ByteSliceToString(u.Release[:]), mod == nil, suiteMode())
		}
	})
	kind, err := linkKind(h.Netns, iface)
	if err != nil {
		t.Fatalf("%s: link %s: %v", h.Name, iface, err)
	}
	procs := userspaceProcs(iface)
	got := netlinkx.ModeKernel
	if kind != "wireguard" {
		got = netlinkx.ModeUserspace
	}
	t.Logf("%s: %s is a %s link (%s mode), userspace device processes: %d", h.Name, iface, kind, got, len(procs))
	switch {
	case want == netlinkx.ModeKernel && kind != "wireguard":
		t.Fatalf("kernel suite: %s's link %s is a %s link (userspace), not a kernel wireguard link", h.Name, iface, kind)
	case want == netlinkx.ModeKernel && len(procs) > 0:
		t.Fatalf("kernel suite: %s's link %s is a kernel link, but userspace device processes run for it: %v", h.Name, iface, procs)
	case want == netlinkx.ModeUserspace && (kind != "tuntap" || len(procs) == 0):
		t.Fatalf("%s's link %s: a %s link with %d userspace device processes, want a userspace device", h.Name, iface, kind, len(procs))
	case kind != "wireguard" && kind != "tuntap":
		t.Fatalf("%s's link %s is a %s link, not a WireGuard device", h.Name, iface, kind)
	}
}

func linkKind(ns, iface string) (string, error) {
	h, err := netns.GetFromName(ns)
	if err != nil {
		return "", err
	}
	defer h.Close()
	nh, err := netlink.NewHandleAt(h)
	if err != nil {
		return "", err
	}
	defer nh.Close()
	l, err := nh.LinkByName(iface)
	if err != nil {
		return "", err
	}
	return l.Type(), nil
}

// userspaceProcs lists the processes serving a userspace WireGuard device
// for iface (meshd's wireguard-userspace, or the test binary standing in
// for it), as "pid cmdline".
func userspaceProcs(iface string) []string {
	paths, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	var out []string
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		for i, a := range args {
			if a == "wireguard-userspace" && i+1 < len(args) && args[i+1] == iface {
				out = append(out, filepath.Base(filepath.Dir(p))+" "+strings.Join(args, " "))
				break
			}
		}
	}
	return out
}

// TestMixedFleet: a host on a kernel link and a host on a userspace device
// (wireguard: userspace) form one mesh and reach each other both ways. In
// the default suite, where the machine has no module, both are userspace.
func TestMixedFleet(t *testing.T) {
	lab := testlab.NewLab(t)
	server := lab.StartConsulServer("consul")
	servers := []*testlab.Consul{server}
	h1 := newNode(t, lab, servers, 1, "")
	h2 := newNode(t, lab, servers, 2, "wireguard: userspace\n")
	h2.mode = netlinkx.ModeUserspace
	nodes := []*node{h1, h2}
	startAll(t, nodes...)
	pingAll(t, nodes)
	for _, n := range nodes {
		st, err := n.status(t)
		if err != nil {
			t.Fatal(err)
		}
		want := string(n.mode)
		if n.mode == netlinkx.ModeAuto {
			want = map[bool]string{true: "kernel", false: "userspace"}[kernelSuite()]
		}
		if st.Mode != want {
			t.Errorf("%s's status says mode %q, want %q", n.Name, st.Mode, want)
		}
	}
}

// TestKernelSuiteCatchesFallback breaks the kernel suite on purpose: it
// runs TestMesh in kernel mode with every meshd told to run userspace
// devices (MESHD_WIREGUARD=userspace, meshd's own setting), which is what a
// silent fallback looks like. The run must fail, naming the userspace link.
func TestKernelSuiteCatchesFallback(t *testing.T) {
	testlab.RequireRoot(t)
	cmd := exec.Command(os.Args[0], "-test.run", "^TestMesh$", "-test.failfast", "-test.count=1")
	cmd.Env = append(os.Environ(), wireguardEnv+"=kernel", "MESHD_WIREGUARD=userspace", meshdBinEnv+"="+meshd(t))
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("TestMesh passed in kernel mode on userspace devices:\n%s", tail(string(out), 40))
	}
	if !strings.Contains(string(out), "(userspace), not a kernel wireguard link") {
		t.Fatalf("TestMesh failed, but not on the link check (%v):\n%s", err, tail(string(out), 40))
	}
	t.Logf("the kernel suite refused the fallback: %s", firstLine(string(out), "not a kernel wireguard link"))
}

func firstLine(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return strings.TrimSpace(l)
		}
	}
	return fmt.Sprintf("(no line with %q)", sub)
}
