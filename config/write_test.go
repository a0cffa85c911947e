package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestAddMissing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "etc", "meshd.yaml")
	added, err := AddMissing(path, []Setting{{"node_name", "h1"}, {"prefix", "fdaa:0:1::/48"}})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"node_name", "prefix"}, added); diff != "" {
		t.Errorf("added (-want +got):\n%s", diff)
	}
	cfg, _, err := Load(path, nil)
	if err != nil || cfg.NodeName != "h1" || cfg.Prefix.String() != "fdaa:0:1::/48" {
		t.Fatalf("written file loads as %+v, %v", cfg, err)
	}

	// An operator's file: its values, comments and order survive; only
	// missing keys are added.
	operator := "# managed by hand\nprefix: fdaa:0:9::/48 # kept\nmtu: 1380\nconsul:\n  address: 10.0.0.1:8500\n"
	if err := os.WriteFile(path, []byte(operator), 0o640); err != nil {
		t.Fatal(err)
	}
	added, err = AddMissing(path, []Setting{{"node_name", "h1"}, {"prefix", "fdaa:0:1::/48"}, {"endpoint", "192.0.2.1:51820"}})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"node_name", "endpoint"}, added); diff != "" {
		t.Errorf("added (-want +got):\n%s", diff)
	}
	b, _ := os.ReadFile(path)
	for _, want := range []string{"# managed by hand", "prefix: fdaa:0:9::/48 # kept", "mtu: 1380", "address: 10.0.0.1:8500", "node_name: h1", "endpoint: 192.0.2.1:51820"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("file lacks %q:\n%s", want, b)
		}
	}

	// Nothing missing: the file is not rewritten.
	st1, _ := os.Stat(path)
	added, err = AddMissing(path, []Setting{{"node_name", "other"}})
	if err != nil || len(added) != 0 {
		t.Fatalf("AddMissing of a present key: %v, %v", added, err)
	}
	st2, _ := os.Stat(path)
	if !os.SameFile(st1, st2) {
		t.Error("file rewritten although nothing was added")
	}

	if err := os.WriteFile(path, []byte("- a list\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := AddMissing(path, []Setting{{"node_name", "h1"}}); err == nil {
		t.Error("AddMissing accepted a YAML list as a config file")
	}
}
