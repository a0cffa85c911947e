// Package catalogsync is the mesh's only contact with Consul (the gateway's
// record store and the prefix allocator keep their own KV code): Catalog
// registers this node's instance of the meshd service on the local agent,
// watches the service's health endpoint with blocking queries, follows and
// writes hints and merges them into what it delivers, and puts the node's
// health summary.
//
// The watch follows consul-template's watch/view.go: it waits on the last
// index, resets to 0 when the index goes backwards, treats an index of 0 as
// 1 so that it never spins on non-blocking reads, reads afresh (index 0)
// after an error because the servers may come back with a lower index,
// drops returns whose
// content did not change, limits wakes with a token bucket so a churning
// catalog degrades to periodic polls, backs off with jitter on errors, and
// stops when its context is cancelled. Stale reads are allowed: any server
// may answer, which is what keeps the watch cheap and alive without a
// leader.
//
// The service carries no health check of its own: every write to a check
// would wake every watcher in the fleet.
package catalogsync
