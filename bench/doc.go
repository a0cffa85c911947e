// Package bench measures how fast a change in the Consul catalog reaches the
// kernels of a mesh: meshd against the classic approach (consul-template
// rendering a WireGuard configuration from KV, applied with wg syncconf) and
// against the floor (a bare blocking query on the endpoint meshd watches), in
// the same run, on real Consul agents, real meshd hosts in network
// namespaces and real WireGuard devices. `make bench` runs it and writes
// BENCHMARKS.md; `make bench-quick` is the small run CI checks.
//
// It is a module of its own so that meshd's go.mod does not carry the
// plotting library.
package bench
