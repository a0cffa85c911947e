package licenses

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

var update = flag.Bool("update", false, "rewrite testdata/copyright.golden")

func fixture(name string) Module {
	return Module{Path: "example.org/" + name, Version: "v1.0.0", Dir: filepath.Join("testdata", "mods", name)}
}

// TestRead reads committed licence files (the canonical texts, not text
// this test made) and checks what they were recognised as.
func TestRead(t *testing.T) {
	tests := []struct {
		mod       string
		ids       []string
		files     []string
		copyright []string
		notice    bool
		err       string
	}{
		{mod: "apache", ids: []string{"Apache-2.0"}, files: []string{"LICENSE"},
			copyright: []string{"Copyright 2019-2021 The Example Authors"}, notice: true},
		{mod: "mit", ids: []string{"MIT"}, files: []string{"LICENSE.md"},
			copyright: []string{"Copyright (c) 2020 Jane Example <jane@example.org>"}},
		{mod: "dual", ids: []string{"Apache-2.0", "MIT"}, files: []string{"LICENSE-APACHE", "LICENSE-MIT"},
			copyright: []string{"Copyright (c) 2020 Jane Example <jane@example.org>"}},
		{mod: "gpl", ids: []string{"GPL-3.0"}, files: []string{"COPYING"},
			copyright: []string{"Copyright (C) 2007 Free Software Foundation, Inc. <https://fsf.org/>"}},
		{mod: "none", err: "module example.org/none@v1.0.0: no licence file"},
		{mod: "custom", err: "module example.org/custom@v1.0.0: LICENSE is 0% known licence text, want at least 75%"},
	}
	for _, tt := range tests {
		t.Run(tt.mod, func(t *testing.T) {
			l, err := Read(fixture(tt.mod))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("Read = %v, want an error containing %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.ids, l.IDs); diff != "" {
				t.Errorf("IDs (-want +got):\n%s", diff)
			}
			var files []string
			for _, f := range l.Files {
				files = append(files, f.Name)
			}
			if diff := cmp.Diff(tt.files, files); diff != "" {
				t.Errorf("Files (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.copyright, l.Copyright, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("Copyright (-want +got):\n%s", diff)
			}
			if (l.Notice != "") != tt.notice {
				t.Errorf("Notice = %q, want one: %v", l.Notice, tt.notice)
			}
		})
	}
}

// TestCheckRefuses is the check failing on a module with a disallowed
// licence (GPL-3.0, a committed fixture), beside allowed ones it passes.
func TestCheckRefuses(t *testing.T) {
	var allowed []License
	for _, name := range []string{"apache", "mit", "dual"} {
		l, err := Read(fixture(name))
		if err != nil {
			t.Fatal(err)
		}
		allowed = append(allowed, l)
	}
	if err := Check(allowed); err != nil {
		t.Fatalf("Check(allowed) = %v", err)
	}
	gpl, err := Read(fixture("gpl"))
	if err != nil {
		t.Fatal(err)
	}
	err = Check(append(allowed, gpl))
	if !errors.Is(err, ErrNotAllowed) {
		t.Fatalf("Check with a GPL-3.0 module = %v, want ErrNotAllowed", err)
	}
	want := "module example.org/gpl@v1.0.0: GPL-3.0 (in COPYING): licence not in the allow list [Apache-2.0 BSD-2-Clause BSD-3-Clause ISC MIT MPL-2.0]"
	if err.Error() != want {
		t.Errorf("error:\n got %s\nwant %s", err, want)
	}
}

// TestLinked builds the licenses command (a test binary records no
// dependencies) and reads its build information: the main module first,
// then its dependencies, each found in the module cache.
func TestLinked(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "licenses")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/licenses").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	mods, err := Linked(bin, "../..")
	if err != nil {
		t.Fatal(err)
	}
	if mods[0].Path != "meshd.dev/meshd" || mods[0].Dir != "../.." {
		t.Errorf("main module = %+v", mods[0])
	}
	var paths []string
	for _, m := range mods[1:] {
		paths = append(paths, m.Path)
		if _, err := os.Stat(m.Dir); err != nil {
			t.Errorf("%s: %v", m, err)
		}
	}
	for _, want := range []string{"github.com/google/licensecheck"} {
		if !slices.Contains(paths, want) {
			t.Errorf("linked modules %v lack %s", paths, want)
		}
	}
	if !slices.IsSorted(paths) {
		t.Errorf("not sorted: %v", paths)
	}
	if _, err := Linked("testdata/mods/mit/LICENSE.md", "."); err == nil {
		t.Error("Linked on a file that is no Go binary succeeded")
	}
}

// TestCopyright compares the copyright file for the fixtures with the
// committed golden file (go test -run TestCopyright -update rewrites it).
func TestCopyright(t *testing.T) {
	var ls []License
	for _, name := range []string{"apache", "dual", "mit"} {
		l, err := Read(fixture(name))
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
	}
	ls[0].Version = "" // the main module
	var buf bytes.Buffer
	up := Upstream{Name: "meshd", Contact: "meshd developers <maintainers@meshd.dev>", Source: "https://meshd.dev/meshd"}
	if err := WriteCopyright(&buf, up, ls); err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "copyright.golden")
	if *update {
		if err := os.WriteFile(golden, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(want), buf.String()); diff != "" {
		t.Errorf("copyright (-want +got):\n%s", diff)
	}
	// Every paragraph of a DEP-5 file is "Field: value" lines with
	// one-space continuation lines; no blank line inside a field.
	for i, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if line != "" && !strings.HasPrefix(line, " ") && !strings.Contains(line, ": ") {
			t.Errorf("line %d is neither a field nor a continuation: %q", i+1, line)
		}
	}
	if err := WriteCopyright(&buf, up, nil); err == nil {
		t.Error("WriteCopyright of no modules succeeded")
	}
}
