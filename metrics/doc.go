// Package metrics exposes the agent's state to Prometheus. A Collector reads
// the agent's status (which reads the device live) at every scrape, so the
// metrics say what the kernel has, not what meshd intended.
//
// Cardinality: the per-peer series (handshake age, bytes received and
// sent) carry a node label, so a host exposes 3 series per peer; every other
// series is a fixed set. Rejection reasons are a fixed set of codes.
package metrics
