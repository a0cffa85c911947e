package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"meshd.dev/meshd/internal/trusttest"
	"meshd.dev/meshd/trust"
)

// meshdBin builds the command once per test run.
func meshdBin(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "meshd")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v: %s", err, out)
	}
	return bin
}

// TestBadInput runs the real binary with bad configuration: each case must
// exit 2 with one line naming what was wrong, and touch nothing.
func TestBadInput(t *testing.T) {
	bin := meshdBin(t)
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	// A host with a good identity and credential, kept outside state_dir.
	id, cred := trusttest.Provision(t, trusttest.Authority(), dir, "h1", "fdaa:0:1::/48", "")
	_, otherNode := trusttest.Provision(t, trusttest.Authority(), filepath.Join(dir, "other"), "h2", "fdaa:0:1::/48", id)
	stranger, err := trust.AuthorityFromSeed([]byte("a stranger's authority key seed!"))
	if err != nil {
		t.Fatal(err)
	}
	_, untrusted := trusttest.Provision(t, stranger, filepath.Join(dir, "stranger"), "h1", "fdaa:0:1::/48", id)
	garbled := filepath.Join(dir, "garbled")
	if err := os.WriteFile(garbled, []byte("not a credential\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	base := "node_name: h1\nendpoint: 192.0.2.1:51820\nprefix: fdaa:0:1::/48\nstate_dir: " + state +
		"\nstatus_socket: " + filepath.Join(dir, "s.sock") + "\nidentity_key_file: " + id + "\ncredential_file: " + cred +
		"\ntrust:\n  authorities: " + trusttest.PublicKey() + "\n"
	insecureKey := filepath.Join(dir, "insecure.key")
	if err := os.WriteFile(insecureKey, []byte("aGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd28=\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	noTrust := strings.Replace(base, "trust:\n  authorities: "+trusttest.PublicKey()+"\n", "", 1)
	tests := []struct {
		name string
		file string
		args []string
		env  []string
		want string
	}{
		{"port out of range", base + "listen_port: 70000\n", nil, nil, `listen_port = "70000"`},
		{"flag beats file and is checked", base, []string{"--mtu", "99"}, nil, `mtu = "99"`},
		{"env is checked", base, nil, []string{"MESHD_REMOVAL_GRACE=-1s"}, `removal_grace = "-1s"`},
		{"prefix outside supernet", strings.Replace(base, "fdaa:0:1::/48", "fdbb::/48", 1), nil, nil, "outside the mesh supernet"},
		{"missing endpoint", strings.Replace(base, "endpoint: 192.0.2.1:51820\n", "", 1), nil, nil, "endpoint"},
		{"unknown flag", base, []string{"--no-such-flag"}, nil, "unknown flag"},
		{"group-readable key", base + "key_file: " + insecureKey + "\n", nil, nil, "readable by group or others"},
		{"MTU below IPv6 minimum", base + "mtu: 1000\n", nil, nil, `mtu = "1000"`},
		{"supernet not IPv6", base, []string{"--mesh-supernet", "10.0.0.0/8"}, nil, `mesh_supernet = "10.0.0.0/8"`},
		{"prefix with host bits", strings.Replace(base, "fdaa:0:1::/48", "fdaa:0:1::5/48", 1), nil, nil, "host bits"},
		{"endpoint host name", strings.Replace(base, "192.0.2.1:51820", "db.example:51820", 1), nil, nil, "ip:port"},
		{"negative grace", base, []string{"--removal-grace=-30s"}, nil, `removal_grace = "-30s"`},
		{"fraction above 1", base + "max_removal_fraction: 2\n", nil, nil, "fraction"},
		{"unreadable token file", base + "consul:\n  token_file: /nonexistent/token\n", nil, nil, "consul.token_file"},
		{"relative state dir", strings.Replace(base, "state_dir: "+state, "state_dir: var/lib/meshd", 1), nil, nil, "absolute path"},
		{"node name not a label", strings.Replace(base, "node_name: h1", "node_name: -h1-", 1), nil, nil, "DNS label"},
		{"bad log level", base, nil, []string{"MESHD_LOG_LEVEL=chatty"}, `log_level = "chatty"`},
		{"interface name too long", base, []string{"--interface", "wireguard-mesh-0"}, nil, "1-15 characters"},
		{"not YAML", "node_name: [\n", nil, nil, "not valid YAML"},
		{"no authority", noTrust, nil, nil, "trust.authorities"},
		{"authority not a key", noTrust + "trust:\n  authorities: [nope]\n", nil, nil, `trust.authorities = "nope"`},
		{"credential of another node", base, []string{"--credential-file", otherNode}, nil, `for node "h2"`},
		{"credential of a stranger", base, []string{"--credential-file", untrusted}, nil, "not signed by a trusted authority"},
		{"credential garbled", base, []string{"--credential-file", garbled}, nil, "expected a base64 credential"},
		{"credential missing", base, []string{"--credential-file", filepath.Join(dir, "none")}, nil, "does not exist"},
		{"identity key readable", base, []string{"--identity-key-file", insecureKey}, nil, "readable by group or others"},
		{"gateway without the role", base + "gateway:\n  enabled: true\n", nil, nil, "gateway role"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := filepath.Join(t.TempDir(), "meshd.yaml")
			if err := os.WriteFile(cfg, []byte(tt.file), 0o600); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(bin, append([]string{"run", "--config", cfg}, tt.args...)...)
			cmd.Env = append(os.Environ(), tt.env...)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			err := cmd.Run()
			ee, ok := err.(*exec.ExitError)
			if !ok || ee.ExitCode() != 2 {
				t.Fatalf("exit: %v, want status 2; stderr: %s", err, stderr.String())
			}
			msg := strings.TrimSpace(stderr.String())
			if strings.Count(msg, "\n") != 0 || !strings.Contains(msg, tt.want) {
				t.Errorf("stderr = %q, want one line containing %q", msg, tt.want)
			}
			if _, err := os.Stat(state); !os.IsNotExist(err) && tt.name != "relative state dir" {
				t.Errorf("state_dir was created despite bad input")
			}
		})
	}
}

func TestVersion(t *testing.T) {
	out, err := exec.Command(meshdBin(t), "version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "meshd ") {
		t.Errorf("meshd version: %q, %v", out, err)
	}
}

// TestManPages generates the manual pages as make package does: every
// command that is not hidden has its page, naming each of its flags; and
// a page with a flag taken out is caught.
func TestManPages(t *testing.T) {
	dir := t.TempDir()
	if out, err := exec.Command(meshdBin(t), "man", "--dir", dir).CombinedOutput(); err != nil {
		t.Fatalf("meshd man: %v: %s", err, out)
	}
	problems, pages := manProblems(dir)
	for _, p := range problems {
		t.Error(p)
	}
	if pages < 20 {
		t.Errorf("%d pages, want one per command", pages)
	}
	root := filepath.Join(dir, "meshd.1")
	b, err := os.ReadFile(root)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(root, []byte(strings.ReplaceAll(string(b), `\fB--config\fP`, "")), 0o644); err != nil {
		t.Fatal(err)
	}
	if problems, _ := manProblems(dir); len(problems) != 1 || !strings.Contains(problems[0], "--config") {
		t.Errorf("a page without --config: problems %q, want that one", problems)
	}
}

// manProblems lists the commands without a page in dir and the flags
// their page does not name, and counts the pages.
func manProblems(dir string) (problems []string, pages int) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Hidden || c.Name() == "help" {
			return
		}
		page, err := os.ReadFile(filepath.Join(dir, strings.ReplaceAll(c.CommandPath(), " ", "-")+".1"))
		if err != nil {
			problems = append(problems, fmt.Sprintf("no man page for %q: %v", c.CommandPath(), err))
			return
		}
		pages++
		c.NonInheritedFlags().VisitAll(func(f *pflag.Flag) {
			if !f.Hidden && !strings.Contains(string(page), `\fB--`+f.Name+`\fP`) {
				problems = append(problems, fmt.Sprintf("the page of %q lacks --%s", c.CommandPath(), f.Name))
			}
		})
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(newRootCmd())
	return problems, pages
}
