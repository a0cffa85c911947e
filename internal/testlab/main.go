package testlab

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/internal/leakcheck"
	"meshd.dev/meshd/netlinkx"
)

const (
	daemonEnv  = "MESHD_TEST_USERSPACE_DAEMON"
	inNetnsEnv = "MESHD_TEST_IN_NETNS"
)

// IsRoot reports whether the tests can create namespaces and links.
func IsRoot() bool { return os.Geteuid() == 0 }

// RequireRoot skips t unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if !IsRoot() {
		t.Skip("needs root for network namespaces, links and routes (CI runs as root)")
	}
}

// Main is TestMain for packages whose tests change the network: as root, it
// runs the package's tests again inside a fresh network namespace of their
// own, so they cannot touch the host's links and routes, and removes it
// after. The tests must leave no goroutine running (leakcheck). It also serves as the userspace WireGuard device process that
// UserspaceArgv starts.
func Main(m *testing.M) {
	if os.Getenv(daemonEnv) == "1" {
		os.Exit(serveDaemon(os.Args[1:]))
	}
	if !IsRoot() || os.Getenv(inNetnsEnv) != "" {
		os.Exit(leakcheck.Run(m))
	}
	sweep()
	ns := fmt.Sprintf("%s%dt", nsPrefix, os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "testlab: ip netns add %s: %v: %s\n", ns, err, out)
		os.Exit(1)
	}
	if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "testlab: loopback up in %s: %v: %s\n", ns, err, out)
		removeNetns(ns)
		os.Exit(1)
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, os.Args...)...)
	cmd.Env = append(os.Environ(), inNetnsEnv+"="+ns)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	// Forward interrupts so the inner run cleans up before we delete its
	// namespace.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "testlab: run tests in %s: %v\n", ns, err)
		removeNetns(ns)
		os.Exit(1)
	}
	go func() {
		for s := range sigs {
			cmd.Process.Signal(s)
		}
	}()
	err := cmd.Wait()
	removeNetns(ns)
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			os.Exit(ee.ExitCode())
		}
		os.Exit(1)
	}
	os.Exit(0)
}

// UserspaceArgv is the command that runs a userspace WireGuard device from
// a test binary whose TestMain calls Main; pass it to
// netlinkx.UserspaceStarter.
func UserspaceArgv() []string {
	exe, err := os.Executable()
	if err != nil {
		panic(err)
	}
	return []string{"/usr/bin/env", daemonEnv + "=1", exe}
}

func serveDaemon(args []string) int {
	logger := netlinkx.UserspaceLogger()
	if len(args) != 2 {
		logger.Error("usage: NAME MTU", "args", args)
		return 2
	}
	mtu, err := strconv.Atoi(args[1])
	if err != nil {
		logger.Error("bad MTU", "mtu", args[1])
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := netlinkx.ServeUserspace(ctx, args[0], mtu, logger); err != nil {
		logger.Error("userspace device failed", "err", err)
		return 1
	}
	return 0
}

// WireGuardModes are the link backends this machine runs: userspace devices
// everywhere, kernel links where the kernel has the wireguard module (inside
// scripts/vm). Benchmarks measure each, so that make bench puts the two
// side by side in one VM.
func WireGuardModes() []netlinkx.Mode {
	if _, err := os.Stat("/sys/module/wireguard"); err == nil {
		return []netlinkx.Mode{netlinkx.ModeKernel, netlinkx.ModeUserspace}
	}
	return []netlinkx.Mode{netlinkx.ModeUserspace}
}

// OpenLink opens a netlinkx.Link for a test: a userspace device served by
// the test binary (see Main), a fresh key unless opts has one, warnings to
// stderr unless opts has a logger. The link is removed when the test ends,
// after cleanups registered later (an agent using it stops first).
func OpenLink(tb testing.TB, opts netlinkx.Options) *netlinkx.Link {
	tb.Helper()
	if opts.PrivateKey == (wgtypes.Key{}) {
		k, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			tb.Fatal(err)
		}
		opts.PrivateKey = k
	}
	if opts.StartUserspace == nil {
		opts.StartUserspace = netlinkx.UserspaceStarter(UserspaceArgv(), "")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	l, err := netlinkx.Open(opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		l.Remove()
		l.Close()
	})
	return l
}
