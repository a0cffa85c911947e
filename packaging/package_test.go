package packaging

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"meshd.dev/meshd/internal/testlab"
)

func run(t *testing.T, dir string, argv ...string) string {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
	}
	return string(out)
}

// TestDebianPackage builds the .deb with `make package`, checks its files,
// modes, conffiles, scripts and unit, installs it into a throwaway root with
// dpkg --root, runs the installed meshd there, and upgrades it over an
// edited configuration, which must survive.
func TestDebianPackage(t *testing.T) {
	testlab.RequireRoot(t) // dpkg --root and chroot need root
	root := testlab.ModuleRoot(t)
	out := t.TempDir()
	run(t, root, "make", "--no-print-directory", "package", "PKG_VERSION=1.2.3~test")
	debs, _ := filepath.Glob(filepath.Join(root, "out", "meshd_1.2.3~test_amd64.deb"))
	if len(debs) != 1 {
		t.Fatalf("make package made %v", debs)
	}
	deb := debs[0]
	defer os.Remove(deb)

	contents := run(t, root, "dpkg-deb", "-c", deb)
	for _, want := range []string{
		`-rwxr-xr-x root/root .* ./usr/bin/meshd$`,
		`-rw-r--r-- root/root .* ./lib/systemd/system/meshd.service$`,
		`-rw-r----- root/root .* ./etc/meshd/meshd.yaml$`,
		`-rw-r--r-- root/root .* ./usr/share/doc/meshd/examples/meshd.yaml$`,
	} {
		if !regexp.MustCompile(`(?m)` + want).MatchString(contents) {
			t.Errorf("package lacks %s:\n%s", want, contents)
		}
	}
	ctrl := filepath.Join(out, "control")
	run(t, root, "dpkg-deb", "-e", deb, ctrl)
	if b, _ := os.ReadFile(filepath.Join(ctrl, "conffiles")); strings.TrimSpace(string(b)) != "/etc/meshd/meshd.yaml" {
		t.Errorf("conffiles = %q, want the config file", b)
	}
	if b, _ := os.ReadFile(filepath.Join(ctrl, "control")); !strings.Contains(string(b), "Version: 1.2.3~test") {
		t.Errorf("control:\n%s", b)
	}
	// The maintainer scripts must not start the service: a host is not a
	// member before meshd init.
	for _, s := range []string{"postinst", "prerm", "postrm"} {
		b, err := os.ReadFile(filepath.Join(ctrl, s))
		if err != nil {
			t.Fatalf("no %s: %v", s, err)
		}
		code := regexp.MustCompile(`(?m)^\s*#.*$`).ReplaceAll(b, nil)
		if regexp.MustCompile(`systemctl (.* )?(start|enable)\b`).Match(code) {
			t.Errorf("%s starts or enables the service:\n%s", s, b)
		}
	}

	unit, err := os.ReadFile(filepath.Join(root, "packaging", "meshd.service"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"ExecStart=/usr/bin/meshd run", "Restart=always", "KillMode=process",
		"CapabilityBoundingSet=CAP_NET_ADMIN\n", "ProtectSystem=strict", "StateDirectory=meshd",
		"RuntimeDirectory=meshd wireguard", "RuntimeDirectoryPreserve=yes", "After=network-online.target consul.service",
		"NoNewPrivileges=yes", "DeviceAllow=/dev/net/tun rw",
	} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("unit lacks %q", want)
		}
	}

	// Install into an empty root, as dpkg would on a new host, with the
	// maintainer scripts run outside it (DPKG_ROOT set, so they touch
	// nothing of this machine's).
	dest := filepath.Join(out, "root")
	for _, d := range []string{"var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers"} {
		os.MkdirAll(filepath.Join(dest, d), 0o755)
	}
	os.WriteFile(filepath.Join(dest, "var/lib/dpkg/status"), nil, 0o644)
	os.WriteFile(filepath.Join(dest, "var/lib/dpkg/available"), nil, 0o644)
	dpkg := []string{"dpkg", "--root=" + dest, "--force-script-chrootless", "--force-not-root", "--log=/dev/null", "-i", deb}
	run(t, root, dpkg...)
	if got := run(t, root, "chroot", dest, "/usr/bin/meshd", "version"); !strings.HasPrefix(got, "meshd 1.2.3~test") {
		t.Errorf("installed meshd version = %q", got)
	}
	status := run(t, root, "dpkg", "--root="+dest, "-s", "meshd")
	if !strings.Contains(status, "Status: install ok installed") {
		t.Errorf("dpkg status:\n%s", status)
	}

	// Upgrade over an operator's edited configuration: it is kept.
	conf := filepath.Join(dest, "etc/meshd/meshd.yaml")
	edited := "node_name: edited-by-operator\n"
	if err := os.WriteFile(conf, []byte(edited), 0o640); err != nil {
		t.Fatal(err)
	}
	run(t, root, dpkg...)
	if b, _ := os.ReadFile(conf); string(b) != edited {
		t.Errorf("upgrade replaced the edited config with:\n%s", b)
	}
}
