// Package agent is meshd's mesh loop and its wiring.
//
// The loop is internal/loop's: catalog snapshots, the resync ticker, the
// end of a removal grace and retries after a failure only mark it dirty,
// so bursts coalesce; one reconcile then plans from the latest snapshot
// (peers.Planner, against its model of the kernel or the kernel read
// afresh) and applies the plan through netlinkx. A reconcile with nothing
// to change writes nothing. The agent reaches Consul only through its
// Catalog interface (catalogsync.Catalog): it imports no Consul API and
// never sees a hint.
//
// Stopping (context cancelled: SIGTERM, SIGINT) leaves the registration,
// the link, its peers and routes exactly as they are, so that a restart or
// an upgrade costs the fleet nothing. Leaving (Leave) deregisters the node
// and removes its link and routes, then ends Run.
package agent
