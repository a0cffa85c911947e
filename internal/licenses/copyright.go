package licenses

import (
	"bufio"
	"fmt"
	"io"
	"slices"
	"strings"
)

// Upstream names the package's own source for the copyright file's header.
type Upstream struct {
	Name    string // e.g. meshd
	Contact string // e.g. meshd developers <maintainers@meshd.dev>
	Source  string // where the source is published
}

// commonLicenses are the licences whose full text Debian ships in
// /usr/share/common-licenses: the copyright file refers to them instead of
// copying them (lintian asks for that).
var commonLicenses = []string{"Apache-2.0", "MPL-2.0"}

// WriteCopyright writes the Debian machine-readable copyright file (format
// 1.0) for a binary built from ls: ls[0] is the main module ("Files: *"),
// the others are the modules linked into it, one paragraph each with its
// version, copyright lines, licence and NOTICE.
func WriteCopyright(w io.Writer, up Upstream, ls []License) error {
	if len(ls) == 0 {
		return fmt.Errorf("write copyright: no modules")
	}
	bw := bufio.NewWriter(w)
	fmt.Fprintf(bw, "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n")
	fmt.Fprintf(bw, "Upstream-Name: %s\nUpstream-Contact: %s\nSource: %s\n", up.Name, up.Contact, up.Source)
	fmt.Fprintf(bw, "Comment: /usr/bin/%s is one statically linked Go program. Besides its own\n", up.Name)
	fmt.Fprintf(bw, " source it contains the Go modules listed below, at the versions given, each\n")
	fmt.Fprintf(bw, " under the licence found in its own licence files.\n")

	var used []string
	for i, l := range ls {
		files := "*"
		if i > 0 {
			files = "vendor/" + l.Path + "/*"
		}
		fmt.Fprintf(bw, "\nFiles: %s\n", files)
		holders := l.Copyright
		if len(holders) == 0 {
			holders = []string{"the " + l.Path + " authors (its licence files name no holder)"}
		}
		fmt.Fprintf(bw, "Copyright: %s\n", strings.Join(holders, "\n "))
		expr := strings.Join(l.IDs, " and ")
		fmt.Fprintf(bw, "License: %s\n", expr)
		// A file holding only licences Debian ships is referred to; any
		// other is copied whole, since its text names its holders.
		first := true
		for _, f := range l.Files {
			common := true
			for _, id := range f.IDs {
				if !slices.Contains(commonLicenses, id) {
					common = false
				} else if !slices.Contains(used, id) {
					used = append(used, id)
				}
			}
			if common {
				continue
			}
			if !first {
				fmt.Fprintf(bw, " .\n")
			}
			first = false
			writeText(bw, f.Text)
		}
		comment := "Go module " + l.Module.String() + "."
		if i == 0 {
			comment = "Go module " + l.Path + ", the program itself."
		}
		fmt.Fprintf(bw, "Comment: %s\n", comment)
		if l.Notice != "" {
			fmt.Fprintf(bw, " .\n Its NOTICE file:\n .\n")
			writeText(bw, l.Notice)
		}
	}
	slices.Sort(used)
	for _, id := range used {
		fmt.Fprintf(bw, "\nLicense: %s\n On Debian systems, the complete text of this licence can be found in\n /usr/share/common-licenses/%s.\n", id, id)
	}
	return bw.Flush()
}

// writeText writes text as the continuation lines of a field: each line
// indented by one space, an empty line as " .".
func writeText(w io.Writer, text string) {
	for line := range strings.Lines(strings.TrimSpace(text)) {
		line = strings.TrimRight(line, " \t\r\n")
		if line == "" {
			line = "."
		}
		fmt.Fprintf(w, " %s\n", line)
	}
}
