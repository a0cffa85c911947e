package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"meshd.dev/meshd/internal/testlab"
)

// metricName is a meshd metric named in a query.
var metricName = regexp.MustCompile(`\bmeshd_[a-z0-9_]+`)

// dashboardProblems checks a Grafana dashboard's queries: each must parse
// as PromQL (promtool check rules, with Grafana's variables given values),
// and each meshd metric it names must be one of exported (names read from
// a real /metrics).
func dashboardProblems(t *testing.T, dashboard []byte, exported map[string]bool) []string {
	t.Helper()
	var d struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
		Templating struct {
			List []struct{ Query any }
		}
	}
	if err := json.Unmarshal(dashboard, &d); err != nil {
		return []string{fmt.Sprintf("dashboard is not JSON: %v", err)}
	}
	var problems []string
	type rule struct {
		Record string `yaml:"record"`
		Expr   string `yaml:"expr"`
	}
	var rules []rule
	vars := strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$instance", ".*")
	for _, p := range d.Panels {
		if len(p.Targets) == 0 {
			problems = append(problems, fmt.Sprintf("panel %q has no query", p.Title))
		}
		for _, tg := range p.Targets {
			rules = append(rules, rule{Record: fmt.Sprintf("dashboard:query%d", len(rules)), Expr: vars.Replace(tg.Expr)})
			for _, m := range metricName.FindAllString(tg.Expr, -1) {
				if !exported[m] {
					problems = append(problems, fmt.Sprintf("panel %q names %s, which meshd does not export", p.Title, m))
				}
			}
		}
	}
	for _, v := range d.Templating.List {
		if q, ok := v.Query.(string); ok {
			for _, m := range metricName.FindAllString(q, -1) {
				if !exported[m] {
					problems = append(problems, fmt.Sprintf("variable query %q names %s, which meshd does not export", q, m))
				}
			}
		}
	}
	b, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}})
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "dashboard-rules.yaml")
	if err := os.WriteFile(file, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtoolPath, "check", "rules", file).CombinedOutput(); err != nil {
		problems = append(problems, fmt.Sprintf("a query does not parse: %v: %s", err, out))
	}
	return problems
}

// checkDashboard checks packaging/grafana/meshd.json against the metrics of
// a real scrape (scrape's values), and that a broken query and an unknown
// metric are caught.
func checkDashboard(t *testing.T, values map[string]float64) {
	t.Helper()
	exported := map[string]bool{}
	for series := range values {
		name, _, _ := strings.Cut(series, "{")
		exported[name] = true
	}
	b, err := os.ReadFile(filepath.Join(testlab.ModuleRoot(t), "packaging", "grafana", "meshd.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range dashboardProblems(t, b, exported) {
		t.Error(p)
	}
	for name, broken := range map[string]string{
		"unbalanced": strings.Replace(string(b), "sum by (state) (meshd_peers{", "sum by (state) ((meshd_peers{", 1),
		"unknown":    strings.Replace(string(b), "meshd_kernel_writes_total", "meshd_kernel_writez_total", 1),
	} {
		if broken == string(b) {
			t.Fatalf("%s: the query to break is not in the dashboard", name)
		}
		if len(dashboardProblems(t, []byte(broken), exported)) == 0 {
			t.Errorf("a dashboard with an %s query passed the check", name)
		}
	}
}
