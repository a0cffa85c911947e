package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"meshd.dev/meshd/agent"
	"meshd.dev/meshd/health"
	"meshd.dev/meshd/internal/testlab"
)

// health runs `meshd health` on n and returns its exit code and line.
func (n *node) health(t *testing.T, args ...string) (int, string) {
	t.Helper()
	out, err := n.Exec(append([]string{meshd(t), "health", "--config", n.config}, args...)...)
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("meshd health on %s: %v", n.Name, err)
	}
	return code, strings.TrimSpace(out)
}

// meshRow is the documented schema of `meshd mesh --json`.
type meshRow struct {
	Node     string          `json:"node"`
	Verdict  string          `json:"verdict"`
	Problems []string        `json:"problems"`
	Health   string          `json:"health"`
	Summary  *health.Summary `json:"summary"`
	Age      float64         `json:"summary_age_seconds"`
	From     []string        `json:"unreachable_from"`
}

// meshJSON runs `meshd mesh --json` on n.
func (n *node) meshJSON(t *testing.T) []meshRow {
	t.Helper()
	out, err := n.Command(meshd(t), "mesh", "--json", "--config", n.config).Output()
	if err != nil {
		t.Fatalf("meshd mesh --json on %s: %v", n.Name, err)
	}
	var rows []meshRow
	dec := json.NewDecoder(bytes.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rows); err != nil {
		t.Fatalf("mesh --json does not match the schema: %v\n%s", err, out)
	}
	return rows
}

// statusJSON parses `meshd status --json` on n with the documented schema.
func (n *node) statusJSON(t *testing.T) agent.Status {
	t.Helper()
	out, err := n.Command(meshd(t), "status", "--json", "--config", n.config).Output()
	if err != nil {
		t.Fatalf("meshd status --json on %s: %v", n.Name, err)
	}
	var st agent.Status
	dec := json.NewDecoder(strings.NewReader(string(out)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&st); err != nil {
		t.Fatalf("status --json of %s does not match the schema: %v\n%s", n.Name, err, out)
	}
	return st
}

// TestHealth checks the operator's view on real namespace hosts: status and
// health on a converged mesh, a rejected entry, a host whose underlay is
// cut, and a stopped agent.
func TestHealth(t *testing.T) {
	_, server, nodes := startHosts(t, 3, "removal_grace: 10m\nkeepalive: 10s\n")
	h1, h2, h3 := nodes[0], nodes[1], nodes[2]

	// Every host lists every other as applied, with a handshake.
	for _, n := range nodes {
		testlab.Eventually(t, 30*time.Second, n.Name+" status lists the others applied with a handshake", func() bool {
			st := n.statusJSON(t)
			ok := 0
			for _, p := range st.Peers {
				if p.State == agent.PeerApplied && p.LatestHandshake != nil && p.RxBytes > 0 {
					ok++
				}
			}
			return st.Converged && st.LinkPresent && ok == len(nodes)-1
		})
		code, line := n.health(t)
		if code != 0 || !strings.HasPrefix(line, "OK") {
			t.Errorf("health on %s: %d %q, want 0 OK", n.Name, code, line)
		}
	}
	out, err := h1.Exec(meshd(t), "status", "--config", h1.config)
	if err != nil || !strings.Contains(out, "converged: yes") || !strings.Contains(out, "HANDSHAKE") {
		t.Errorf("meshd status: %v\n%s", err, out)
	}

	t.Run("metrics", func(t *testing.T) { checkMetrics(t, h1, len(nodes)-1) })
	testlab.Eventually(t, 30*time.Second, "meshd mesh lists every host as ok", func() bool {
		rows := h1.meshJSON(t)
		ok := 0
		for _, r := range rows {
			if r.Verdict == "ok" && r.Summary != nil && r.Summary.Converged {
				ok++
			}
		}
		return len(rows) == len(nodes) && ok == len(nodes)
	})

	// A rejected catalog entry shows with its reason, and warns.
	c := server.Client(t)
	_, err = c.Catalog().Register(&api.CatalogRegistration{Node: "bogus", Address: "198.18.9.9",
		Service: &api.AgentService{ID: "meshd-bogus", Service: "meshd", Meta: map[string]string{
			"v": "1", "node": "bogus", "public_key": "nope", "endpoint": "198.18.9.9:51820", "prefix": "fdaa:0:9::/48"}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	testlab.Eventually(t, 20*time.Second, "h1 lists the bogus entry as rejected with its reason", func() bool {
		for _, p := range h1.statusJSON(t).Peers {
			if p.ServiceID == "meshd-bogus" {
				return p.State == agent.PeerRejected && strings.Contains(p.Reason, "public_key")
			}
		}
		return false
	})
	if code, line := h1.health(t); code != 1 || !strings.Contains(line, "rejected") {
		t.Errorf("health with a rejected entry: %d %q, want 1 naming it", code, line)
	}
	if _, err := c.Catalog().Deregister(&api.CatalogDeregistration{Node: "bogus"}, nil); err != nil {
		t.Fatal(err)
	}
	testlab.Eventually(t, 20*time.Second, "h1 healthy again", func() bool { code, _ := h1.health(t); return code == 0 })

	// Cut h3's underlay. WireGuard re-handshakes every 2 minutes while
	// keepalives flow, so healthy peers stay under 135s and h3 goes over.
	if out, err := h3.Exec("ip", "link", "set", "eth0", "down"); err != nil {
		t.Fatalf("cut h3's underlay: %v: %s", err, out)
	}
	var why string
	testlab.Eventually(t, 60*time.Second, "meshd mesh marks h3 broken, first", func() bool {
		rows := h1.meshJSON(t)
		b, _ := json.Marshal(rows)
		why = string(b)
		return len(rows) == len(nodes) && rows[0].Node == "h3" && rows[0].Verdict == "broken"
	}, &why)
	for _, n := range []*node{h1, h2} {
		var line string
		testlab.Eventually(t, 4*time.Minute, n.Name+" health warns about h3", func() bool {
			var code int
			code, line = n.health(t, "--handshake-age", "135s")
			return code == 1 && strings.Contains(line, "(h3)")
		}, &line)
		t.Logf("%s: %s", n.Name, line)
	}

	// A stopped agent is critical.
	h1.proc.Signal(syscall.SIGTERM)
	if exited, _ := h1.proc.Wait(10 * time.Second); !exited {
		t.Fatal("meshd did not stop")
	}
	if code, line := h1.health(t); code != 2 || !strings.Contains(line, "not running") {
		t.Errorf("health with the agent stopped: %d %q, want 2", code, line)
	}
	if out, err := h1.Exec(meshd(t), "status", "--config", h1.config); err == nil || !strings.Contains(out, "not running") || !strings.Contains(out, "still up") {
		t.Errorf("status with the agent stopped: %v\n%s", err, out)
	}
}

var (
	promtoolOnce sync.Once
	promtoolPath string
	promtoolErr  error
)

// checkMetrics checks n's metrics against what the mesh is.
func checkMetrics(t *testing.T, n *node, peers int) {
	values := scrape(t, n)
	checks := []struct {
		series string
		ok     func(float64) bool
		want   string
	}{
		{`meshd_peers{state="applied"}`, func(v float64) bool { return v == float64(peers) }, fmt.Sprint(peers)},
		{`meshd_peers{state="rejected"}`, func(v float64) bool { return v == 0 }, "0"},
		{`meshd_converged`, func(v float64) bool { return v == 1 }, "1"},
		{`meshd_link_present`, func(v float64) bool { return v == 1 }, "1"},
		{`meshd_catalog_reachable`, func(v float64) bool { return v == 1 }, "1"},
		{`meshd_catalog_index`, func(v float64) bool { return v > 0 }, "> 0"},
		{`meshd_catalog_last_read_age_seconds`, func(v float64) bool { return v >= 0 && v < 60 }, "0 to 60"},
		{`meshd_reconciles_total`, func(v float64) bool { return v >= 1 }, ">= 1"},
		{`meshd_reconcile_errors_total`, func(v float64) bool { return v == 0 }, "0"},
		{`meshd_reconcile_duration_seconds_count`, func(v float64) bool { return v >= 1 }, ">= 1"},
		{`meshd_kernel_writes_total`, func(v float64) bool { return v >= float64(peers) }, ">= peers"},
		{`meshd_catalog_registrations_total`, func(v float64) bool { return v == 1 }, "1"},
		{`meshd_catalog_hints_total`, func(v float64) bool { return v >= 0 }, ">= 0"},
		{`meshd_catalog_hint_reads_total`, func(v float64) bool { return v >= 0 }, ">= 0"},
		{`meshd_catalog_hints_carried_total`, func(v float64) bool { return v >= 0 }, ">= 0"},
		{`meshd_catalog_hints_applied_total`, func(v float64) bool { return v >= 0 }, ">= 0"},
		{`meshd_breaker_tripped`, func(v float64) bool { return v == 0 }, "0"},
		{`meshd_snapshot_age_seconds`, func(v float64) bool { return v >= 0 && v < 600 }, "0 to 600"},
		{`meshd_peer_handshake_age_seconds{node="h2"}`, func(v float64) bool { return v >= 0 && v < 180 }, "0 to 180"},
		{`meshd_peer_receive_bytes_total{node="h2"}`, func(v float64) bool { return v > 0 }, "> 0"},
		{`meshd_peer_transmit_bytes_total{node="h2"}`, func(v float64) bool { return v > 0 }, "> 0"},
	}
	for _, c := range checks {
		v, ok := values[c.series]
		if !ok {
			t.Errorf("metrics lack %s", c.series)
		} else if !c.ok(v) {
			t.Errorf("%s = %v, want %s", c.series, v, c.want)
		}
	}
}

// scrape reads n's metrics endpoint (its default, loopback inside n's
// namespace), lints the exposition with promtool check metrics, and returns
// every series' value.
func scrape(t *testing.T, n *node) map[string]float64 {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{DialContext: testlab.DialInNetns(n.Netns)}, Timeout: 10 * time.Second}
	resp, err := client.Get("http://127.0.0.1:9474/metrics")
	if err != nil {
		t.Fatalf("scrape %s: %v", n.Name, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: %d %v", n.Name, resp.StatusCode, err)
	}
	promtoolOnce.Do(func() {
		out, err := exec.Command(filepath.Join(testlab.ModuleRoot(t), "scripts", "promtool-bin")).Output()
		promtoolPath, promtoolErr = strings.TrimSpace(string(out)), err
	})
	if promtoolErr != nil {
		t.Fatalf("scripts/promtool-bin: %v", promtoolErr)
	}
	promtool := promtoolPath
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(body)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
	values := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, val, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(val, 64)
		if err == nil {
			values[name] = v
		}
	}
	return values
}
