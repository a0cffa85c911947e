package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// newManCmd writes the manual pages of the command tree (meshd(1) and one
// page per command) into a directory: make package ships them, so they
// are generated from the commands and flags themselves and cannot drift.
// It is hidden: an operator reads the pages, not this command.
func newManCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:    "man",
		Short:  "Write the manual pages into a directory",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" {
				return usage(fmt.Errorf("--dir: expected the directory to write the pages in"))
			}
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			root := cmd.Root()
			root.DisableAutoGenTag = true
			return doc.GenManTree(root, &doc.GenManHeader{Title: "MESHD", Section: "1", Source: "meshd " + version, Manual: "meshd manual"}, dir)
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "directory to write the pages in")
	return cmd
}
