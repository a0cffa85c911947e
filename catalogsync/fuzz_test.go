package catalogsync

import (
	"slices"
	"strings"
	"testing"

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
