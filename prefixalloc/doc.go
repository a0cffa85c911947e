// Package prefixalloc hands out 6PN prefixes from the mesh supernet through
// Consul KV, with no central allocator: a prefix is claimed by creating the
// key meshd/prefixes/<prefix with / as _> with a check-and-set of index 0,
// which Consul performs atomically, so two hosts bootstrapping at the same
// moment can never hold the same prefix. The key's value is the owning node.
//
// A node's search starts at a point derived from its name, so that many
// hosts bootstrapping at once mostly try different prefixes first.
package prefixalloc
