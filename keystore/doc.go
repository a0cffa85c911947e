// Package keystore holds this host's WireGuard private key on disk.
//
// The key file holds the base64 key on one line, as `wg genkey` writes it.
// It is created with mode 0600 through an atomic rename, and a key file that
// group or others can read is refused: a leaked private key lets anyone
// impersonate the host in the mesh. The PrivateKey type never prints the
// secret, so it is safe to pass to a logger by mistake.
package keystore
