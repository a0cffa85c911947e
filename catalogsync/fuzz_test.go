package catalogsync

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/hashicorp/consul/api"

	"meshd.dev/meshd/peers"
)

// FuzzHTTPDecode feeds arbitrary responses to the raw reader's decoder,
// twice (the second read goes through its cache): it never panics, and what
// it returns is sorted and the same both times.
func FuzzHTTPDecode(f *testing.F) {
	f.Add([]byte(`[{"Node":{},"Service":{"ID":"meshd-h1","Meta":{"v":"1"},"Tags":["gateway"],"CreateIndex":5,"ModifyIndex":7},"Checks":[{"CheckID":"serfHealth","Status":"passing"}]}]`))
	f.Add([]byte(`[{"Service":{"ID":"b","ModifyIndex":0}},{"Service":{"ID":"a","Meta":{"k":1}}},{"Service":null},3]`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		h := &HTTP{}
		first, err := h.decode(body)
		// The response read through a tiny window, a byte at a time (values
		// cut by the window's end everywhere), decodes the same, or fails
		// the same.
		tiny := &HTTP{win: 3}
		bytewise, bErr := tiny.decodeFrom(iotest.OneByteReader(bytes.NewReader(body)))
		if fmt.Sprint(err) != fmt.Sprint(bErr) || !reflect.DeepEqual(first, bytewise) {
			t.Fatalf("read through a tiny window: %+v, %v; whole: %+v, %v", bytewise, bErr, first, err)
		}
		if err != nil {
			return
		}
		cmpID := func(a, b peers.Entry) int { return strings.Compare(a.ServiceID, b.ServiceID) }
		if !slices.IsSortedFunc(first, cmpID) {
			t.Fatal("entries not sorted by service ID")
		}
		second, err := h.decode(body)
		if err != nil {
			t.Fatalf("second decode failed: %v", err)
		}
		if !sameEntries(first, second) {
			t.Fatalf("second decode differs: %+v vs %+v", first, second)
		}
	})
}

// FuzzHTTPDecodeIncremental decodes a response after another one, so that
// the decoder takes what the two have in common from the first: the result
// (or the failure) is exactly what a fresh decoder makes of the second.
func FuzzHTTPDecodeIncremental(f *testing.F) {
	one := `{"Node":{"Node":"n1"},"Service":{"ID":"meshd-h1","Meta":{"v":"1","public_key":"a"},"Tags":[],"CreateIndex":5,"ModifyIndex":7},"Checks":[]}`
	two := `{"Node":{"Node":"n2"},"Service":{"ID":"meshd-h2","Meta":{"v":"1","public_key":"b"},"Tags":["gateway"],"CreateIndex":6,"ModifyIndex":8},"Checks":[{"CheckID":"serfHealth","Status":"critical"}]}`
	twoChanged := strings.Replace(strings.Replace(two, `"b"`, `"c"`, 1), `:8}`, `:9}`, 1)
	f.Add([]byte("["+one+","+two+"]"), []byte("["+one+","+twoChanged+"]"))
	f.Add([]byte("["+one+","+two+"]"), []byte("["+two+"]"))
	f.Add([]byte("["+two+"]"), []byte("["+one+","+two+"]"))
	f.Add([]byte("["+one+", "+two+"]"), []byte("["+one+",null, "+two+"] "))
	f.Add([]byte("["+one+"]"), []byte("["+one+"]x"))
	f.Fuzz(func(t *testing.T, a, b []byte) {
		warm := &HTTP{}
		_, _ = warm.decode(a)
		got, gotErr := warm.decode(b)
		want, wantErr := (&HTTP{}).decode(b)
		if (gotErr == nil) != (wantErr == nil) {
			t.Fatalf("after %q, decode of %q: err %v; fresh decoder: %v", a, b, gotErr, wantErr)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("after %q, decode of %q:\n got  %+v\n want %+v", a, b, got, want)
		}
		// And again, now from b itself.
		again, err := warm.decode(b)
		if (err == nil) != (wantErr == nil) || !reflect.DeepEqual(again, want) {
			t.Fatalf("second decode of %q: %+v, %v; want %+v, %v", b, again, err, want, wantErr)
		}
	})
}

// FuzzHTTPDecodeMatchesAPI builds health responses as Consul writes them
// (the API's own types, marshalled) from fuzzed fields, and checks that the
// raw decoder reads what the API client would, on a first read and on a
// second one that goes through its cache after one instance changed.
func FuzzHTTPDecodeMatchesAPI(f *testing.F) {
	f.Add("meshd-h1", "public_key", "k\u00e9y\"\\/<>&\u2028", "gateway", uint64(3), uint64(9), "passing", "serfHealth", uint8(2))
	f.Add("", "", "", "", uint64(0), uint64(0), "critical", "_node_maintenance", uint8(0))
	f.Fuzz(func(t *testing.T, id, metaKey, metaVal, tag string, create, modify uint64, status, checkID string, n uint8) {
		var es []*api.ServiceEntry
		for i := range int(n%4) + 1 {
			es = append(es, &api.ServiceEntry{
				Node: &api.Node{Node: "n", TaggedAddresses: map[string]string{"lan": "x"}, Meta: map[string]string{"a": "b"}},
				Service: &api.AgentService{ID: id + strconv.Itoa(i), Service: "meshd", Tags: []string{tag, "t"},
					Meta: map[string]string{metaKey: metaVal, "v": "1"}, CreateIndex: create, ModifyIndex: modify + uint64(i),
					Weights: api.AgentWeights{Passing: 1}},
				Checks: api.HealthChecks{{CheckID: checkID, Status: status, Output: metaVal}},
			})
		}
		h := &HTTP{}
		checkRound(t, h, es, 1)
		es[0].Service.Meta = map[string]string{"changed": metaVal}
		es[0].Service.ModifyIndex++
		checkRound(t, h, es, 2)
	})
}

func checkRound(t *testing.T, h *HTTP, es []*api.ServiceEntry, round int) {
	t.Helper()
	body, err := json.Marshal(es)
	if err != nil {
		t.Fatal(err)
	}
	var back []*api.ServiceEntry
	if err := json.Unmarshal(body, &back); err != nil {
		t.Fatal(err)
	}
	got, err := h.decode(body)
	if err != nil {
		t.Fatalf("round %d: decode of %s: %v", round, body, err)
	}
	if want := Convert(back); !reflect.DeepEqual(want, got) {
		t.Fatalf("round %d: decode differs from the API's:\napi %+v\nraw %+v", round, want, got)
	}
}

// FuzzScanDepth decodes responses nested around the scanner's depth limit
// with fuzzed content at the bottom: it never panics, never accepts a body
// deeper than maxDepth, and decodes the same twice.
func FuzzScanDepth(f *testing.F) {
	f.Add(uint8(maxDepth-2), "1")
	f.Add(uint8(maxDepth-1), "{}")
	f.Add(uint8(maxDepth-3), `{"a":[1,{"b":null}]}`)
	f.Add(uint8(0), `"x"`)
	f.Fuzz(func(t *testing.T, k uint8, inner string) {
		h := &HTTP{}
		first, err := h.decode(nested(int(k), inner))
		if err != nil {
			return
		}
		if int(k)+2 > maxDepth {
			t.Fatalf("accepted a body nested %d deep", int(k)+2)
		}
		second, err := h.decode(nested(int(k), inner))
		if err != nil || !sameEntries(first, second) {
			t.Fatalf("second decode differs: %v", err)
		}
	})
}
