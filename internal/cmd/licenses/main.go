// Command licenses checks the licence of every Go module linked into a
// binary against the allow list of package licenses, prints one line per
// module, and optionally writes the Debian copyright file for the binary.
// `make licenses` and `make package` run it; it exits 1 when a module's
// licence is missing, unrecognised or not allowed, 2 on a bad flag.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"meshd.dev/meshd/internal/atomicfile"
	"meshd.dev/meshd/internal/licenses"
)

func main() {
	binary := flag.String("binary", "bin/meshd", "the Go binary to check")
	mainDir := flag.String("main-dir", ".", "the main module's directory")
	copyright := flag.String("copyright", "", "write the Debian copyright file here")
	contact := flag.String("contact", "", "Upstream-Contact of the copyright file (required with -copyright)")
	source := flag.String("source", "https://meshd.dev/meshd", "Source of the copyright file")
	flag.Parse()
	if flag.NArg() > 0 || (*copyright != "" && *contact == "") {
		fmt.Fprintln(os.Stderr, "licenses: usage: licenses [-binary FILE] [-main-dir DIR] [-copyright FILE -contact 'NAME <ADDRESS>']")
		os.Exit(2)
	}
	if err := run(*binary, *mainDir, *copyright, licenses.Upstream{Name: "meshd", Contact: *contact, Source: *source}); err != nil {
		for line := range strings.Lines(err.Error()) {
			fmt.Fprintf(os.Stderr, "licenses: %s", strings.TrimRight(line, "\n")+"\n")
		}
		os.Exit(1)
	}
}

func run(binary, mainDir, copyright string, up licenses.Upstream) error {
	mods, err := licenses.Linked(binary, mainDir)
	if err != nil {
		return err
	}
	var ls []licenses.License
	for _, m := range mods {
		l, err := licenses.Read(m)
		if err != nil {
			return err
		}
		fmt.Printf("%-50s %-40s %s\n", m.Path, m.Version, strings.Join(l.IDs, " and "))
		ls = append(ls, l)
	}
	if err := licenses.Check(ls); err != nil {
		return err
	}
	fmt.Printf("%d modules linked into %s, every licence in the allow list %v\n", len(ls), binary, licenses.Allowed)
	if copyright == "" {
		return nil
	}
	return atomicfile.Write(copyright, 0o644, func(w io.Writer) error {
		return licenses.WriteCopyright(w, up, ls)
	})
}
