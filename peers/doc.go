// Package peers is meshd's pure core: it turns a catalog snapshot and this
// host's identity into the desired set of WireGuard peers, and diffs that
// against what the kernel has into a Plan.
//
// Nothing here does I/O: no netlink, no wgctrl, no Consul client. The same
// inputs always give the same Plan, which is what lets the control loop be
// level-triggered and the rules be tested with plain tables.
//
// The rules follow the design's "Desired state" section: every entry is
// validated and an invalid one is rejected with a reason while the rest
// apply; conflicts (same key, overlapping prefixes) go to the older
// registration; additions and changes apply at once, while a peer that
// left the catalog is removed only after a grace period.
package peers
