package main

import (
	"context"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/spf13/cobra"

	"meshd.dev/meshd/netlinkx"
)

// newUserspaceCmd is the process that holds a userspace WireGuard device
// when the kernel has no module. `meshd run` starts it detached, so the
// data plane outlives the agent; deleting the link ends it.
func newUserspaceCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "wireguard-userspace NAME MTU",
		Short:  "Run a userspace WireGuard device (started by meshd run)",
		Hidden: true,
		Args:   cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			mtu, err := strconv.Atoi(args[1])
			if err != nil {
				return usage(err)
			}
			// SIGTERM from a process-group kill does not reach us (we run
			// in our own session), but an explicit one ends the device.
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return netlinkx.ServeUserspace(ctx, args[0], mtu, netlinkx.UserspaceLogger())
		},
	}
}
