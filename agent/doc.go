// Package agent is meshd's control loop.
//
// It is level-triggered: catalog snapshots, the resync ticker, the end of a
// removal grace and retries after a failure only mark the state dirty
// through a one-slot channel, so bursts coalesce; one reconcile then
// recomputes the plan from the latest snapshot and what the kernel actually
// has, and applies it. A reconcile with nothing to change writes nothing.
//
// Stopping (context cancelled: SIGTERM, SIGINT) leaves the registration,
// the link, its peers and routes exactly as they are, so that a restart or
// an upgrade costs the fleet nothing. Leaving (Leave) deregisters the node
// and removes its link and routes, then ends Run.
package agent
