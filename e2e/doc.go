// Package e2e runs whole meshes: real meshd processes in network namespace
// hosts, each beside its own Consul client agent joined to a Consul server,
// with real WireGuard devices, routes and pings between the hosts.
package e2e
