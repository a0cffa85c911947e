package catalogsync

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"
)

// healthBody is a health response of n instances as Consul writes it, with
// Meta the size a signed entry's is.
func healthBody(tb testing.TB, n int) []byte {
	tb.Helper()
	es := make([]*api.ServiceEntry, n)
	for i := range es {
		node := fmt.Sprintf("node-%05d", i)
		es[i] = &api.ServiceEntry{
			Node: &api.Node{ID: fmt.Sprintf("%036d", i), Node: node, Address: "10.0.0.1", Datacenter: "dc1",
				TaggedAddresses: map[string]string{"lan": "10.0.0.1", "wan": "10.0.0.1"}, Meta: map[string]string{"consul-network-segment": ""},
				CreateIndex: uint64(10 + i), ModifyIndex: uint64(10 + i)},
			Service: &api.AgentService{ID: "meshd-" + node, Service: "meshd", Port: 51820, Address: "10.0.0.1",
				Meta: map[string]string{"v": "1", "node": node, "public_key": strings.Repeat("k", 43) + "=",
					"endpoint": "10.0.0.1:51820", "prefix": "fdaa:0:1::/48", "keepalive": "25", "serial": "1764000000000000000",
					"sig": strings.Repeat("s", 86) + "==", "cred": strings.Repeat("c", 240)},
				Tags: []string{}, Weights: api.AgentWeights{Passing: 1, Warning: 1},
				CreateIndex: uint64(20 + i), ModifyIndex: uint64(20 + i)},
			Checks: api.HealthChecks{{Node: node, CheckID: "serfHealth", Name: "Serf Health Status", Status: "passing",
				Output: "Agent alive and reachable", CreateIndex: uint64(10 + i), ModifyIndex: uint64(10 + i)}},
		}
	}
	b, err := json.Marshal(es)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// BenchmarkHTTPDecode decodes a health response of 10,000 instances: a
// first read (every instance parsed), and the same response again (every
// instance reused, as at each anti-entropy read of a calm fleet). B/op is
// what a read allocates: the response itself is never held whole.
func BenchmarkHTTPDecode(b *testing.B) {
	body := healthBody(b, 10000)
	b.Run("first", func(b *testing.B) {
		b.SetBytes(int64(len(body)))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := (&HTTP{}).decodeFrom(bytes.NewReader(body)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("unchanged", func(b *testing.B) {
		h := &HTTP{}
		if _, err := h.decodeFrom(bytes.NewReader(body)); err != nil {
			b.Fatal(err)
		}
		b.SetBytes(int64(len(body)))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := h.decodeFrom(bytes.NewReader(body)); err != nil {
				b.Fatal(err)
			}
		}
	})
}
