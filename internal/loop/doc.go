// Package loop is meshd's one reconcile loop, used by the agent's mesh
// link and the gateway's user link: level-triggered, as kilo and
// consul-template run theirs. Events only mark the loop dirty (a one-slot
// channel, so a burst of events is one reconcile); a resync ticker marks it
// too, so that drift is repaired; a reconcile says when it must run again
// at the latest (a grace ending, an expiry); after a failed reconcile it
// runs again after a capped exponential backoff with full jitter. Work that
// must not run beside a reconcile (leave, key rotation, a release) runs on
// the loop's goroutine through Do.
package loop
