package catalogsync

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"
)

// TestDecodeReusesUnchangedElements decodes a response of 200 instances,
// then one where an instance changed, one left and one joined: every
// unchanged instance comes back as the entry of the first read (its Meta is
// the same map, not a new parse of the same bytes), the others are read
// anew, and the result is what a fresh decoder reads.
func TestDecodeReusesUnchangedElements(t *testing.T) {
	instance := func(i int, key string) *api.ServiceEntry {
		return &api.ServiceEntry{
			Node: &api.Node{Node: fmt.Sprintf("n%03d", i), Address: "198.18.0.1"},
			Service: &api.AgentService{ID: fmt.Sprintf("meshd-n%03d", i), Service: "meshd",
				Meta: map[string]string{"v": "1", "node": fmt.Sprintf("n%03d", i), "public_key": key}, CreateIndex: uint64(i + 1), ModifyIndex: uint64(i + 1)},
			Checks: api.HealthChecks{{CheckID: "serfHealth", Status: api.HealthPassing}},
		}
	}
	var first []*api.ServiceEntry
	for i := range 200 {
		first = append(first, instance(i, "k"))
	}
	second := append([]*api.ServiceEntry{}, first[:50]...)
	second = append(second, instance(50, "rotated")) // n050 changed
	second = append(second, first[52:150]...)        // n051 left
	second = append(second, instance(500, "k"))      // n500 joined, in the middle
	second = append(second, first[150:199]...)
	second = append(second, instance(999, "k")) // n199 left, n999 joined at the end

	h := &HTTP{}
	decode := func(h *HTTP, es []*api.ServiceEntry) map[string]map[string]string {
		t.Helper()
		body, err := json.Marshal(es)
		if err != nil {
			t.Fatal(err)
		}
		got, err := h.decode(body)
		if err != nil {
			t.Fatal(err)
		}
		metas := map[string]map[string]string{}
		for _, e := range got {
			metas[e.ServiceID] = e.Meta
		}
		return metas
	}
	before := decode(h, first)
	after := decode(h, second)
	fresh := decode(&HTTP{}, second)
	if !reflect.DeepEqual(after, fresh) {
		t.Fatalf("incremental decode differs from a fresh one")
	}
	reused, reread := 0, 0
	for id, m := range after {
		old, ok := before[id]
		if ok && reflect.ValueOf(old).UnsafePointer() == reflect.ValueOf(m).UnsafePointer() {
			reused++
		} else {
			reread++
		}
	}
	// 197 unchanged; n050, n500 and n999 read anew.
	if reused != 197 || reread != 3 {
		t.Errorf("%d instances reused, %d read anew; want every unchanged one reused", reused, reread)
	}
}

// nested is a health response of one instance whose Node holds a field
// nested k arrays deep: the deepest value is at depth 2+k (the element and
// Node are the first two).
func nested(k int, inner string) []byte {
	return []byte(`[{"Node":{"X":` + strings.Repeat("[", k) + inner + strings.Repeat("]", k) +
		`},"Service":{"ID":"meshd-h1","Meta":{"v":"1"},"CreateIndex":1,"ModifyIndex":1},"Checks":[]}]`)
}

// TestScannerDepth: nesting up to maxDepth decodes; one level more is a
// clear error, not a stack the body chooses the size of.
func TestScannerDepth(t *testing.T) {
	es, err := (&HTTP{}).decode(nested(maxDepth-2, "1"))
	if err != nil || len(es) != 1 || es[0].ServiceID != "meshd-h1" {
		t.Fatalf("at the depth limit: %v, %+v", err, es)
	}
	for _, k := range []int{maxDepth - 1, 1 << 20} {
		_, err := (&HTTP{}).decode(nested(k, "1"))
		if err == nil || !strings.Contains(err.Error(), "nested deeper than 32") {
			t.Errorf("nested %d deep: %v, want a depth error", k+2, err)
		}
	}
}

// TestReadBufferShrinks: the read window grows for an instance larger than
// itself, and the next read does not keep the huge window.
func TestReadBufferShrinks(t *testing.T) {
	big := nested(0, `"`+strings.Repeat("x", 8<<20)+`"`)
	small := nested(0, "1")
	body := big
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Consul-Index", "7")
		w.Write(body)
	}))
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	h := &HTTP{client: srv.Client(), base: *u}
	if _, _, err := h.Service(context.Background(), "meshd", &api.QueryOptions{}); err != nil {
		t.Fatal(err)
	}
	if cap(h.buf) < 8<<20 {
		t.Fatalf("buffer of %d bytes after an 8 MiB answer", cap(h.buf))
	}
	body = small
	es, _, err := h.Service(context.Background(), "meshd", &api.QueryOptions{})
	if err != nil || len(es) != 1 {
		t.Fatalf("small answer: %v %+v", err, es)
	}
	if cap(h.buf) > 4*window {
		t.Errorf("buffer still %d bytes after a %d-byte answer", cap(h.buf), len(small))
	}
}
