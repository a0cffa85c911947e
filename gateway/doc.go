// Package gateway holds end users' WireGuard peers on a gateway node: their
// records in Consul KV (DESIGN.md "Gateway peers"), the address claims inside
// the gateway's prefix, the desired state of the gateway's user link, the
// wg-quick configuration handed to a user, and the loop that keeps the
// gateway's user link, routes and firewall in line with the records.
//
// The pure parts (records, desired state, rendering) are separate from the
// Consul calls (store.go) and the kernel calls (runner.go).
package gateway
