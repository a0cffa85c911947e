package netlinkx

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"syscall"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/wgctrl"
)

// UserspaceStarter returns a StartUserspace function that runs argv with
// the interface name and MTU appended, in a new session so that it outlives
// meshd (and a SIGTERM to meshd's process group), with its output appended
// to logPath (or discarded when empty). The process must call
// ServeUserspace. The function returns once the device answers wgctrl.
func UserspaceStarter(argv []string, logPath string) func(name string, mtu int) error {
	return func(name string, mtu int) error {
		out := io.Discard
		if logPath != "" {
			f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
			if err != nil {
				return fmt.Errorf("open userspace device log: %w", err)
			}
			defer f.Close()
			out = f
		}
		cmd := exec.Command(argv[0], append(argv[1:], name, fmt.Sprint(mtu))...)
		cmd.Stdout, cmd.Stderr = out, out
		if logPath != "" {
			// The process keeps its log under MaxUserspaceLog itself
			// (UserspaceLogger): it runs for months.
			cmd.Env = append(os.Environ(), UserspaceLogEnv+"="+logPath)
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("start %s: %w", argv[0], err)
		}
		exited := make(chan error, 1)
		// Reap the process whenever it ends, so it never lingers as a
		// zombie while meshd runs.
		go func() { exited <- cmd.Wait() }()
		return waitForDevice(name, exited, 10*time.Second)
	}
}

func waitForDevice(name string, exited <-chan error, timeout time.Duration) error {
	wg, err := wgctrl.New()
	if err != nil {
		return fmt.Errorf("open wgctrl: %w", err)
	}
	defer wg.Close()
	deadline := time.Now().Add(timeout)
	for {
		if _, err := wg.Device(name); err == nil {
			return nil
		}
		select {
		case err := <-exited:
			return fmt.Errorf("userspace device process exited before %s came up: %v", name, err)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("userspace device %s did not come up within %s", name, timeout)
		}
	}
}

// ServeUserspace runs a userspace WireGuard device named name until ctx is
// done, the device fails, or its link is deleted (which is how meshd leave
// ends it). It listens on the standard UAPI socket so that wgctrl and `wg`
// manage it like any other WireGuard device.
func ServeUserspace(ctx context.Context, name string, mtu int, logger *slog.Logger) error {
	tdev, err := tun.CreateTUN(name, mtu)
	if err != nil {
		return fmt.Errorf("create tun %s: %w", name, err)
	}
	// tun.CreateTUN may pick another name if asked for a pattern; use
	// whatever the kernel gave.
	if real, err := tdev.Name(); err == nil {
		name = real
	}
	fileUAPI, err := ipc.UAPIOpen(name)
	if err != nil {
		tdev.Close()
		return fmt.Errorf("open UAPI socket for %s: %w", name, err)
	}
	wglog := &device.Logger{
		Verbosef: func(string, ...any) {},
		Errorf: func(format string, args ...any) {
			logger.Error("wireguard", "interface", name, "msg", fmt.Sprintf(format, args...))
		},
	}
	dev := device.NewDevice(tdev, conn.NewDefaultBind(), wglog)
	defer dev.Close()
	uapi, err := ipc.UAPIListen(name, fileUAPI)
	if err != nil {
		return fmt.Errorf("listen on UAPI socket for %s: %w", name, err)
	}
	defer uapi.Close()
	acceptErr := make(chan error, 1)
	go func() {
		for {
			c, err := uapi.Accept()
			if err != nil {
				acceptErr <- err
				return
			}
			go dev.IpcHandle(c)
		}
	}()
	logger.Info("userspace device up", "interface", name, "mtu", mtu)
	select {
	case <-ctx.Done():
		return nil
	case <-dev.Wait():
		// The tun went away (link deleted) or the device was closed.
		return nil
	case err := <-acceptErr:
		if errors.Is(err, os.ErrClosed) {
			return nil
		}
		return fmt.Errorf("UAPI socket of %s: %w", name, err)
	}
}
