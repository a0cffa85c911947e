// Package trust is the fleet authority's signatures, pure: credentials
// that bind a host's node name, prefix, identity key, roles and expiry,
// signed by an authority key; entries that a host's identity signs over
// everything a peer uses; their canonical byte formats and their
// verification. Consul carries entries, it does not vouch for them: an
// entry is used only when its credential verifies against a trusted
// authority, has not expired, names the entry's node and prefix, and the
// credential's identity signed the entry.
//
// Every signed message is canonical, versioned and domain-separated: the
// signed bytes start with a context string naming what they are
// ("meshd-credential-v1", "meshd-entry-v1") and a NUL, then a fixed
// sequence of fields, each of fixed length or prefixed by its length, so
// a signature made for one purpose never verifies as another, and two
// different messages never share their bytes. ed25519 (RFC 8032) signs;
// it is deterministic, so the test vectors in testdata are exact.
//
// The agent verifies every entry through peers.Rules.Trust; see the
// README, "Trust".
package trust
