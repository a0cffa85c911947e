package licenses

import (
	"bytes"
	"cmp"
	"debug/buildinfo"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/google/licensecheck"
)

// Allowed is the allow list: the SPDX identifiers of the licences a module
// linked into meshd may carry. Each is permissive or file-level copyleft
// and compatible with meshd's own Apache-2.0.
var Allowed = []string{"Apache-2.0", "BSD-2-Clause", "BSD-3-Clause", "ISC", "MIT", "MPL-2.0"}

// minCoverage is the share (percent) of a licence file's words that known
// licences must cover. Below it the file holds text the scanner did not
// recognise (an extra clause, a custom licence), which a person must read:
// the check fails rather than guess.
const minCoverage = 75

// ErrNotAllowed is wrapped by Check's errors for a licence outside Allowed.
var ErrNotAllowed = errors.New("licence not in the allow list")

// Module is one Go module linked into a binary.
type Module struct {
	Path    string // module path, e.g. github.com/vishvananda/netlink
	Version string // version built, e.g. v1.3.1 ("" for the main module)
	Dir     string // directory holding the module's source
}

func (m Module) String() string {
	if m.Version == "" {
		return m.Path
	}
	return m.Path + "@" + m.Version
}

// License is what a module's licence files say.
type License struct {
	Module
	IDs       []string // SPDX identifiers found in all its files, sorted, each once
	Files     []File   // its licence files, by name
	Copyright []string // copyright lines found in them and in NOTICE, sorted, each once
	Notice    string   // the module's NOTICE file, which Apache-2.0 asks redistributors to carry
}

// File is one licence file of a module.
type File struct {
	Name string   // relative to Module.Dir
	IDs  []string // SPDX identifiers found in it, in order of appearance
	Text string
}

var (
	licenseFile = regexp.MustCompile(`(?i)^(licen[cs]e|copying)([.\-_].*)?$`)
	noticeFile  = regexp.MustCompile(`(?i)^notice(\.(txt|md))?$`)
	// A copyright line names its holder: "Copyright 2009 The Go Authors",
	// "Copyright (c) 2014 ...". Lines that talk about copyright ("the above
	// copyright notice") and templates ("Copyright [yyyy]") are not.
	copyrightLine = regexp.MustCompile(`^\s*(?i:copyright)\s+((?i:\(c\))|©|\d{4}|[A-Z])`)
	notCopyright  = regexp.MustCompile(`(?i)copyright notice|holders|owner\]|\[yyyy\]|\{yyyy\}|<year>`)
)

// Read reads m's licence files and recognises their licences. It fails
// when m has no licence file or when a file is less than minCoverage
// percent known licence text.
func Read(m Module) (License, error) {
	l := License{Module: m}
	entries, err := os.ReadDir(m.Dir)
	if err != nil {
		return l, fmt.Errorf("module %s: %w", m, err)
	}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		name := e.Name()
		switch {
		case noticeFile.MatchString(name):
			b, err := os.ReadFile(filepath.Join(m.Dir, name))
			if err != nil {
				return l, fmt.Errorf("module %s: %w", m, err)
			}
			l.Notice = strings.TrimSpace(string(b))
			l.Copyright = append(l.Copyright, copyrights(b)...)
		case licenseFile.MatchString(name):
			b, err := os.ReadFile(filepath.Join(m.Dir, name))
			if err != nil {
				return l, fmt.Errorf("module %s: %w", m, err)
			}
			cov := licensecheck.Scan(b)
			if cov.Percent < minCoverage {
				return l, fmt.Errorf("module %s: %s is %.0f%% known licence text, want at least %d%%: read it and decide by hand", m, name, cov.Percent, minCoverage)
			}
			f := File{Name: name, Text: strings.TrimSpace(string(b))}
			for _, match := range cov.Match {
				if !slices.Contains(f.IDs, match.ID) {
					f.IDs = append(f.IDs, match.ID)
				}
			}
			l.IDs = append(l.IDs, f.IDs...)
			l.Files = append(l.Files, f)
			l.Copyright = append(l.Copyright, copyrights(b)...)
		}
	}
	if len(l.Files) == 0 {
		return l, fmt.Errorf("module %s: no licence file (LICENSE, LICENCE or COPYING) in %s", m, m.Dir)
	}
	slices.Sort(l.IDs)
	l.IDs = slices.Compact(l.IDs)
	slices.Sort(l.Copyright)
	l.Copyright = slices.Compact(l.Copyright)
	return l, nil
}

func copyrights(text []byte) []string {
	var out []string
	for line := range strings.Lines(string(text)) {
		line = strings.TrimSpace(line)
		if copyrightLine.MatchString(line) && !notCopyright.MatchString(line) && !slices.Contains(out, line) {
			out = append(out, line)
		}
	}
	return out
}

// Check returns an error naming every module whose licences are not all in
// Allowed, or nil.
func Check(ls []License) error {
	var errs []error
	for _, l := range ls {
		for _, f := range l.Files {
			for _, id := range f.IDs {
				if !slices.Contains(Allowed, id) {
					errs = append(errs, fmt.Errorf("module %s: %s (in %s): %w %v", l.Module, id, f.Name, ErrNotAllowed, Allowed))
				}
			}
		}
	}
	return errors.Join(errs...)
}

// Linked lists the modules linked into the Go binary at path (its build
// information), the main module first with Dir mainDir, the rest sorted by
// path, each located in the module cache by `go mod download` (run in
// mainDir). A replaced module is read at its replacement.
func Linked(path, mainDir string) ([]Module, error) {
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read build information of %s: %w", path, err)
	}
	mods := []Module{{Path: bi.Main.Path, Dir: mainDir}}
	var args []string
	for _, d := range bi.Deps {
		if d.Replace != nil {
			d = d.Replace
		}
		if d.Version == "" { // replaced by a directory
			dir := d.Path
			if !filepath.IsAbs(dir) {
				dir = filepath.Join(mainDir, dir)
			}
			mods = append(mods, Module{Path: d.Path, Dir: dir})
			continue
		}
		args = append(args, d.Path+"@"+d.Version)
	}
	if len(args) > 0 {
		cmd := exec.Command("go", append([]string{"mod", "download", "-json"}, args...)...)
		cmd.Dir = mainDir
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return nil, fmt.Errorf("go mod download: %w: %s", err, strings.TrimSpace(stderr.String()))
		}
		dec := json.NewDecoder(bytes.NewReader(out))
		for {
			var d struct{ Path, Version, Dir, Error string }
			if err := dec.Decode(&d); err == io.EOF {
				break
			} else if err != nil {
				return nil, fmt.Errorf("go mod download: %w", err)
			}
			if d.Error != "" || d.Dir == "" {
				return nil, fmt.Errorf("go mod download %s@%s: %s", d.Path, d.Version, cmp.Or(d.Error, "no directory"))
			}
			mods = append(mods, Module{Path: d.Path, Version: d.Version, Dir: d.Dir})
		}
	}
	slices.SortFunc(mods[1:], func(a, b Module) int { return strings.Compare(a.Path, b.Path) })
	return mods, nil
}
