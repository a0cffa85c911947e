package packaging

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"meshd.dev/meshd/internal/licenses"
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
	// The .rpm from the same nfpm configuration, beside it.
	rpms, _ := filepath.Glob(filepath.Join(root, "out", "meshd*1.2.3*.rpm"))
	if len(rpms) != 1 {
		t.Errorf("make package made rpms %v, want one", rpms)
	}
	for _, r := range rpms {
		defer os.Remove(r)
		if b, err := os.ReadFile(r); err != nil || len(b) < 4096 || string(b[:4]) != "\xed\xab\xee\xdb" {
			t.Errorf("%s is not an RPM package (%v)", r, err)
		}
	}
	debug := filepath.Join(root, "out", "meshd_1.2.3~test_amd64.debug")
	defer os.Remove(debug)
	checkLintian(t, root, deb)

	contents := run(t, root, "dpkg-deb", "-c", deb)
	for _, want := range []string{
		`-rwxr-xr-x root/root .* ./usr/bin/meshd$`,
		`-rw-r--r-- root/root .* ./lib/systemd/system/meshd.service$`,
		`-rw-r----- root/root .* ./etc/meshd/meshd.yaml$`,
		`-rw-r--r-- root/root .* ./usr/share/doc/meshd/examples/meshd.yaml$`,
		`-rw-r--r-- root/root .* ./usr/share/meshd/prometheus/meshd-alerts.yaml$`,
		`-rw-r--r-- root/root .* ./usr/share/meshd/grafana/meshd.json$`,
		`-rw-r--r-- root/root .* ./usr/share/man/man1/meshd.1.gz$`,
		`-rw-r--r-- root/root .* ./usr/share/man/man1/meshd-authority-sign.1.gz$`,
		`-rw-r--r-- root/root .* ./usr/share/bash-completion/completions/meshd$`,
		`-rw-r--r-- root/root .* ./usr/share/zsh/vendor-completions/_meshd$`,
		`-rw-r--r-- root/root .* ./usr/share/fish/vendor_completions.d/meshd.fish$`,
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
	maintainer := strings.TrimSpace(readFile(t, filepath.Join(root, "packaging", "maintainer")))
	if b, _ := os.ReadFile(filepath.Join(ctrl, "control")); !strings.Contains(string(b), "Version: 1.2.3~test") ||
		!strings.Contains(string(b), "Maintainer: "+maintainer+"\n") {
		t.Errorf("control lacks the version or the maintainer %q:\n%s", maintainer, b)
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
		"CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW\n", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK AF_PACKET\n", "ProtectSystem=strict", "StateDirectory=meshd",
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
	checkProvenance(t, root, dest, debug)
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

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// knownWarnings are the lintian warnings the package may still draw, each
// with the reason it is not fixed yet. Anything else fails the test, as
// does every error.
var knownWarnings = map[string]string{}

// checkLintian runs Debian's lintian on the package: no error, no warning
// but the known ones, and every override in packaging/lintian/overrides
// says why (a comment right above it).
func checkLintian(t *testing.T, root, deb string) {
	t.Helper()
	cmd := exec.Command("lintian", "--pedantic", "--show-overrides", deb)
	out, err := cmd.CombinedOutput()
	if err != nil && len(out) == 0 {
		t.Fatalf("lintian: %v", err)
	}
	t.Logf("lintian:\n%s", out)
	tag := regexp.MustCompile(`(?m)^([EWIPO]): meshd: (\S+)`)
	for _, m := range tag.FindAllStringSubmatch(string(out), -1) {
		switch {
		case m[1] == "E":
			t.Errorf("lintian error %s", m[2])
		case m[1] == "W" && knownWarnings[m[2]] == "":
			t.Errorf("lintian warning %s", m[2])
		}
	}
	if !strings.Contains(string(out), "O: meshd: statically-linked-binary") {
		t.Errorf("lintian did not read the package's overrides:\n%s", out)
	}
	prevComment := false
	for line := range strings.Lines(readFile(t, filepath.Join(root, "packaging", "lintian", "overrides"))) {
		line = strings.TrimSpace(line)
		if line != "" && !strings.HasPrefix(line, "#") && !prevComment {
			t.Errorf("lintian override %q has no comment saying why", line)
		}
		prevComment = strings.HasPrefix(line, "#")
	}
}

// checkProvenance checks what an installed package says of itself: a
// machine-readable copyright file naming every Go module linked into the
// installed binary with an allowed licence, a changelog for this version by
// the maintainer, and a stripped binary whose symbols are in the .debug
// file kept beside the package.
func checkProvenance(t *testing.T, root, dest, debug string) {
	t.Helper()
	bin := filepath.Join(dest, "usr/bin/meshd")
	copyright := readFile(t, filepath.Join(dest, "usr/share/doc/meshd/copyright"))
	if !strings.HasPrefix(copyright, "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n") {
		t.Errorf("copyright is not in Debian's machine-readable format:\n%.300s", copyright)
	}
	mods, err := licenses.Linked(bin, root)
	if err != nil {
		t.Fatal(err)
	}
	if len(mods) < 10 {
		t.Errorf("installed meshd links %d modules: %v", len(mods), mods)
	}
	for _, m := range mods[1:] {
		if !strings.Contains(copyright, "\nFiles: vendor/"+m.Path+"/*\n") || !strings.Contains(copyright, "Go module "+m.String()+".") {
			t.Errorf("copyright lacks %s", m)
		}
	}
	for _, m := range regexp.MustCompile(`(?m)^License: (.*)$`).FindAllStringSubmatch(copyright, -1) {
		for _, id := range strings.Split(m[1], " and ") {
			if !slices.Contains(licenses.Allowed, id) {
				t.Errorf("copyright names licence %q", id)
			}
		}
	}

	changelog := run(t, root, "gzip", "-dc", filepath.Join(dest, "usr/share/doc/meshd/changelog.gz"))
	maintainer := strings.TrimSpace(readFile(t, filepath.Join(root, "packaging", "maintainer")))
	if !strings.HasPrefix(changelog, "meshd (1.2.3~test) unstable; urgency=medium\n") ||
		!strings.Contains(changelog, "\n -- "+maintainer+"  ") {
		t.Errorf("changelog:\n%s", changelog)
	}

	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Section(".symtab") != nil || f.Section(".debug_info") != nil {
		t.Error("installed meshd is not stripped")
	}
	if s := f.Section(".gnu_debuglink"); s == nil {
		t.Error("installed meshd does not name its debug file")
	}
	d, err := elf.Open(debug)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if syms, err := d.Symbols(); err != nil || len(syms) < 1000 {
		t.Errorf("debug file holds %d symbols: %v", len(syms), err)
	}
}
