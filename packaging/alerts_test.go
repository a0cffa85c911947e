package packaging

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"meshd.dev/meshd/internal/testlab"
)

// promtool is the promtool binary scripts/promtool-bin builds.
func promtool(t *testing.T, root string) string {
	t.Helper()
	out, err := exec.Command(filepath.Join(root, "scripts", "promtool-bin")).Output()
	if err != nil {
		t.Fatalf("scripts/promtool-bin: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// TestAlertRules checks the alerting rules with promtool (check rules, and
// test rules: every alert fires when it should and stays quiet when it
// should not), that every alert has such a test, and that a broken rule
// fails its test.
func TestAlertRules(t *testing.T) {
	root := testlab.ModuleRoot(t)
	dir := filepath.Join(root, "packaging", "prometheus")
	pt := promtool(t, root)
	for _, argv := range [][]string{{"check", "rules", "meshd-alerts.yaml"}, {"test", "rules", "meshd-alerts_test.yaml"}} {
		cmd := exec.Command(pt, argv...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(argv, " "), err, out)
		}
	}

	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert       string
				Annotations map[string]string
			}
		}
	}
	var tests struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string
				ExpAlerts []any `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		}
	}
	read := func(name string, v any) []byte {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal(b, v); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return b
	}
	ruleFile := read("meshd-alerts.yaml", &rules)
	read("meshd-alerts_test.yaml", &tests)
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				quiet[a.Alertname] = true
			}
		}
	}
	var names []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			names = append(names, r.Alert)
			if !fires[r.Alert] {
				t.Errorf("alert %s has no test that it fires", r.Alert)
			}
			if !quiet[r.Alert] && r.Alert != "MeshdCredentialExpiring" {
				t.Errorf("alert %s has no test that it stays quiet", r.Alert)
			}
			if r.Annotations["summary"] == "" || !strings.Contains(r.Annotations["description"], "meshd ") && !strings.Contains(r.Annotations["description"], "`") {
				t.Errorf("alert %s: a summary, and a description saying what to run, please: %v", r.Alert, r.Annotations)
			}
		}
	}
	if len(names) < 10 {
		t.Errorf("only %d alerts: %v", len(names), names)
	}

	// A rule broken on purpose fails its test.
	broken := t.TempDir()
	bad := strings.Replace(string(ruleFile), "expr: meshd_converged == 0", "expr: meshd_converged == 1", 1)
	if bad == string(ruleFile) {
		t.Fatal("the rule to break is not in meshd-alerts.yaml")
	}
	testFile, _ := os.ReadFile(filepath.Join(dir, "meshd-alerts_test.yaml"))
	for name, b := range map[string][]byte{"meshd-alerts.yaml": []byte(bad), "meshd-alerts_test.yaml": testFile} {
		if err := os.WriteFile(filepath.Join(broken, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(pt, "test", "rules", "meshd-alerts_test.yaml")
	cmd.Dir = broken
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "MeshdNotConverged") {
		t.Errorf("promtool test rules passed a broken MeshdNotConverged (%v):\n%s", err, out)
	}
}
