// Package testlab builds the real environments meshd's tests run in: Consul
// agents (a dev agent on loopback, servers and per-host client agents in
// network namespaces) and "hosts" as network namespaces joined by veth pairs
// to a bridge that itself lives in a namespace of the lab's own, so no test
// packet ever reaches the machine's real network.
//
// Everything is real: the consul binary built by scripts/consul-bin, the
// kernel's namespaces, links and routes, userspace WireGuard devices. Tests
// that need root skip with a clear message without it; in CI they run as
// root. Everything a lab makes is removed in t.Cleanup, and namespaces left
// behind by an interrupted run (named after a PID that no longer exists) are
// swept the next time a lab starts.
package testlab
