package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"meshd.dev/meshd/control"
	"meshd.dev/meshd/internal/atomicfile"
)

func newDebugCmd() *cobra.Command {
	debug := &cobra.Command{Use: "debug", Short: "Look inside the running agent"}
	var (
		seconds int
		output  string
	)
	pprof := &cobra.Command{
		Use:   "pprof NAME",
		Short: "Write one of the running agent's Go profiles (heap, goroutine, allocs, profile, ...)",
		Long: "Fetch a Go profile of the running agent over its status socket (root only: the\n" +
			"metrics listener serves no profiles) and write it in pprof's format to --output or\n" +
			"stdout. NAME is heap, goroutine, allocs, block, mutex, threadcreate, or profile (CPU,\n" +
			"for --seconds). Read it with `go tool pprof FILE`.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			if seconds < 0 || seconds > 300 {
				return usage(fmt.Errorf("--seconds = %d: expected 0 to 300", seconds))
			}
			ctx := cmd.Context()
			b, err := control.Profile(ctx, cfg.StatusSocket, args[0], seconds)
			if err != nil {
				return err
			}
			if output == "" {
				_, err = os.Stdout.Write(b)
				return err
			}
			return atomicfile.WriteFile(output, b, 0o600)
		},
	}
	pprof.Flags().IntVar(&seconds, "seconds", 0, "for profile: how long to sample the CPU (default 30 s in the profiler)")
	pprof.Flags().StringVarP(&output, "output", "o", "", "write the profile to this file (mode 0600) instead of stdout")
	debug.AddCommand(pprof)
	return debug
}
