package netlinkx

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// TestCappedLog: a log written far past its cap stays at most the cap, with
// one older file beside it; the newest line is in the current file, and so
// is what is written to the descriptor directly (as a panic would be).
func TestCappedLog(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "userspace-wg0.log")
	// A descriptor of the test's own to point at the log (2 in production).
	scratch, err := os.Create(filepath.Join(dir, "scratch"))
	if err != nil {
		t.Fatal(err)
	}
	defer scratch.Close()
	if err := os.WriteFile(path, bytes.Repeat([]byte("x"), 900), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := OpenCappedLog(path, 1000, int(scratch.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		fmt.Fprintf(l, "line %03d %s\n", i, bytes.Repeat([]byte("y"), 80))
	}
	scratch.WriteString("written to the descriptor\n")
	cur, _ := os.ReadFile(path)
	old, _ := os.ReadFile(path + ".1")
	if len(cur) > 1000+len("written to the descriptor\n") || len(old) > 1000 || len(old) == 0 {
		t.Errorf("log %d bytes, old %d bytes; want each at most 1000", len(cur), len(old))
	}
	if !bytes.Contains(cur, []byte("line 099")) || !bytes.HasSuffix(cur, []byte("written to the descriptor\n")) {
		t.Errorf("current log lacks the last line or the descriptor's write:\n%s", cur)
	}
	if _, err := os.Stat(path + ".2"); err == nil {
		t.Error("more than one old file kept")
	}
}
