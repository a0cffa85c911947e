// Package handshake reads a WireGuard handshake initiation as its
// responder would: the first message of Noise IK, 148 bytes, from which
// the responder's private key recovers the initiator's static public key
// and its TAI64N timestamp. The gateway uses it to install a user's peer
// just in time: an initiation from a key its device does not hold yet is
// read here, checked against the records, and the peer is put in.
//
// The steps are those of the WireGuard paper (section 5.4.2) and of
// wireguard-go's device/noise-protocol.go (ConsumeMessageInitiation) and
// device/cookie.go (CheckMAC1). Consume checks mac1 first, which costs one
// BLAKE2s, so that only a packet made by someone who knows the
// responder's public key costs the two X25519 operations.
//
// Sniff (Linux) watches a UDP port for initiations with a packet socket
// and a classic BPF filter, beside whatever socket owns the port: it sees
// what reaches a kernel WireGuard device and a userspace one alike.
package handshake
